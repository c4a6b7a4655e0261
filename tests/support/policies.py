"""Policies for tests, written as YAML and loaded with the real loader, so every test also goes
through the validation a policy file does. Timeouts and backoffs are short; a test overrides only
what it is about.

- `provider_block` / `route_block` / `make_policy` / `simple_policy`: daemon-style policies, whose
  providers send the canary key (`CANARY_KEY`, from `CANARY_ENV`) unless `keyed=False`;
- `provider_entry` / `tiered_policy`: library-style policies (no key, shorter timeouts).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping
from typing import Any

import yaml

from router.mock import FakeProvider
from router.policy import parse_policy
from router.policy.model import Policy

AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"
# The providers' own API key: it must reach the provider and appear nowhere else.
CANARY_KEY = "sk-canary-7b1e4c0d9a2f-provider-secret"
CANARY_ENV = "TEST_PROVIDER_KEY"
CLIENT_KEY = "client-key-web-123"
CLIENT_ENV = "TEST_CLIENT_WEB_KEY"

FAST_TIMEOUTS = {"connect_s": 1.0, "first_byte_s": 3.0, "idle_s": 2.0}
# Library tests wait for timeouts far more often: shorter ones keep them fast.
QUICK_TIMEOUTS = {"connect_s": 1.0, "first_byte_s": 0.5, "idle_s": 0.5}
FAST_RETRY = {"base_interval_s": 0.01, "max_interval_s": 0.05}
LENIENT_BREAKER = {"consecutive_failures": 100, "base_ejection_s": 1.0, "max_ejection_s": 1.0}

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider_block(fake: FakeProvider | str, *, keyed: bool = True, **overrides: Any) -> dict[str, Any]:
    """A provider entry for `fake` (or a base URL), sending the canary key when `keyed`."""
    base_url = fake if isinstance(fake, str) else fake.base_url
    block: dict[str, Any] = {"base_url": base_url, "timeouts": dict(FAST_TIMEOUTS),
                             "breaker": dict(LENIENT_BREAKER)}
    if keyed:
        block["api_key_env"] = CANARY_ENV
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(block.get(key), dict):
            block[key] = {**block[key], **value}
        else:
            block[key] = value
    return block


def route_block(*targets: tuple[str, str] | Mapping[str, Any], retry: Mapping[str, Any] | None = None,
                **fields: Any) -> dict[str, Any]:
    """A route over (provider, model) pairs in failover order (priority 0, 1, ...)."""
    entries = []
    for priority, target in enumerate(targets):
        if isinstance(target, Mapping):
            entries.append(dict(target))
        else:
            entries.append({"provider": target[0], "model": target[1], "priority": priority})
    return {"targets": entries, "retry": {**FAST_RETRY, **(retry or {})}, "deadline_s": 10, **fields}


def policy_text(providers: Mapping[str, Any], routes: Mapping[str, Any], **top: Any) -> str:
    data: dict[str, Any] = {"version": 1, "providers": dict(providers), "routes": dict(routes), **top}
    return yaml.safe_dump(data, sort_keys=False)


def env_with_keys(**extra: str) -> dict[str, str]:
    return {CANARY_ENV: CANARY_KEY, CLIENT_ENV: CLIENT_KEY, **extra}


def make_policy(providers: Mapping[str, Any], routes: Mapping[str, Any], *,
                env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    return parse_policy(policy_text(providers, routes, **top), source="<server-test>",
                        env=env_with_keys(**(env or {})))


def simple_policy(*fakes: FakeProvider, route: str = "chat", retry: Mapping[str, Any] | None = None,
                  route_fields: Mapping[str, Any] | None = None,
                  provider_fields: Mapping[str, Mapping[str, Any]] | None = None, **top: Any) -> Policy:
    """Route `route` over `fakes` in failover order; upstream model `<fake name>-model`."""
    providers = {fake.name: provider_block(fake, **(provider_fields or {}).get(fake.name, {})) for fake in fakes}
    routes = {route: route_block(*[(fake.name, f"{fake.name}-model") for fake in fakes], retry=retry,
                                 **(route_fields or {}))}
    return make_policy(providers, routes, **top)


def provider_entry(fake: FakeProvider, **overrides: Any) -> dict[str, Any]:
    """A keyless provider block pointing at `fake` with the quick timeouts; nested blocks are merged."""
    timeouts = {**QUICK_TIMEOUTS, **overrides.pop("timeouts", {})}
    return provider_block(fake, keyed=False, timeouts=timeouts, **overrides)


def tiered_policy(*fakes: FakeProvider, retry: Mapping[str, Any] | None = None,
                  providers: Mapping[str, Mapping[str, Any]] | None = None,
                  models: Mapping[str, str] | None = None, route: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    """Route `chat` over `fakes` in failover order (priority 0, 1, ...), one target each.

    `providers` holds per-provider overrides by fake name, `models` the upstream model per
    provider (default `<name>-model`), `retry` and `route` override the route's settings.
    """
    entries = {fake.name: provider_entry(fake, **(providers or {}).get(fake.name, {})) for fake in fakes}
    targets = [{"provider": fake.name, "model": (models or {}).get(fake.name, f"{fake.name}-model"),
                "priority": index} for index, fake in enumerate(fakes)]
    return make_policy(entries, {"chat": {"targets": targets, "retry": {**FAST_RETRY, **(retry or {})},
                                          "deadline_s": 10, **(route or {})}}, env=env, **top)
