"""Load a policy YAML file once, validate all of it, and return frozen `Policy` objects.

Nothing below this module sees a raw dict. Validation runs in two passes:

1. shape: every section is read in file order; types, ranges, unknown keys and
   environment variables are checked as each key is met;
2. references: route targets must name a defined provider and clients' allowed
   routes must name a defined route (a route may be written before the
   providers it uses, so this waits until everything is read).

The first problem found raises `PolicyError`, e.g.
``policies/prod.yaml: routes.chat.retry.max_attempts: must be >= 1, got 0``.
Secrets never appear in messages: only the *name* of a missing variable does.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from router.errors import PolicyError
from router.policy import _fields as f
from router.policy._fields import Invalid
from router.policy._yaml import EMPTY, read_file, read_yaml
from router.policy.model import (
    AdaptivePolicy,
    AdminPolicy,
    Client,
    ClientLimits,
    HedgePolicy,
    Policy,
    Provider,
    RetryBudget,
    RetryPolicy,
    Route,
    ServerPolicy,
    StatePolicy,
    Target,
)
from router.policy.providers import providers

__all__ = ["load_policy", "parse_policy", "policy_from_mapping"]

SUPPORTED_VERSION = 1


# --- public API -------------------------------------------------------------


def load_policy(path: str | os.PathLike[str], *, env: Mapping[str, str] | None = None) -> Policy:
    """Read and validate a policy file. `env` (default: os.environ) supplies the secrets."""
    source = os.fspath(path)
    try:
        text = read_file(source, "the policy file")
    except ValueError as error:
        raise PolicyError(str(error), source=source) from None
    return parse_policy(text, source=source, env=env)


def parse_policy(text: str, *, source: str = "<memory>", env: Mapping[str, str] | None = None) -> Policy:
    """Validate policy YAML held in a string; `source` names it in error messages."""
    try:
        data = read_yaml(text)
    except Invalid as problem:
        raise PolicyError(problem.problem, source=source, path=problem.path) from None
    if data is EMPTY:
        raise PolicyError("the policy is empty; it needs at least `providers` and `routes`", source=source)
    return policy_from_mapping(data, source=source, env=env)


def policy_from_mapping(data: object, *, source: str = "<memory>",
                        env: Mapping[str, str] | None = None) -> Policy:
    """Validate an already-parsed mapping (e.g. built in code or by another config system)."""
    if not isinstance(data, Mapping):
        raise PolicyError("the policy must be a mapping with `providers` and `routes` at the top level, "
                          f"got {f.describe(data)}", source=source)
    try:
        return _Builder(os.environ if env is None else env).policy(data, source)
    except Invalid as problem:
        raise PolicyError(problem.problem, source=source, path=problem.path) from None


# --- sections ---------------------------------------------------------------


_retry = f.block(
    RetryPolicy,
    {
        "max_attempts": f.at_least_one,
        "max_attempts_per_target": f.at_least_one,
        "base_interval_s": f.positive,
        "max_interval_s": f.positive,
        "wait_for_preferred_s": f.non_negative,
    },
    lambda obj, given, path: f.check_order(obj, given, "base_interval_s", "max_interval_s", path),
)
_retry_budget = f.block(RetryBudget, {
    "percent": lambda value, path: f.number(value, path, ge=0, le=100),
    "min_per_second": f.non_negative,
    "window_s": f.positive,
})
_SERVER_FIELDS: dict[str, f.Parser] = {
    "host": f.string,
    "port": lambda value, path: f.integer(value, path, ge=0, le=65535),
    "max_body_bytes": lambda value, path: f.integer(value, path, ge=1024),
    "drain_timeout_s": f.non_negative,
    "head_timeout_s": f.positive,
    "keepalive_s": f.positive,
    "max_connections": f.at_least_one,
    "event_loop": lambda raw, p: f.choice(raw, p, ("auto", "uvloop", "asyncio")),
}


def _check_state(state: StatePolicy, given: Mapping[str, Any], path: str) -> None:
    if state.backend == "redis" and state.url is None:
        raise Invalid("is required when backend is redis (e.g. redis://127.0.0.1:6379/0)",
                      f.join(path, "url"))
    if state.backend == "memory" and state.url is not None:
        raise Invalid("is only used when backend is redis; remove it or set `backend: redis`",
                      f.join(path, "url"))


_state = f.block(
    StatePolicy,
    {
        "backend": lambda value, path: f.choice(value, path, ("memory", "redis")),
        "url": f.optional(f.redis_url),
        "key_prefix": f.string,
        "timeout_ms": f.at_least_one,
        "on_error": lambda value, path: f.choice(value, path, ("local", "allow", "deny")),
        "replicas": f.at_least_one,
    },
    _check_state,
)


def _check_burst(limits: ClientLimits, given: Mapping[str, Any], path: str) -> None:
    if limits.burst is not None and limits.requests_per_second is None:
        raise Invalid("needs `requests_per_second` (burst is the size of that bucket)", f.join(path, "burst"))


_client_limits_fields = f.block(
    ClientLimits,
    {
        "requests_per_second": f.optional(f.positive),
        "burst": f.optional(f.at_least_one),
        "tokens_per_minute": f.optional(f.at_least_one),
        "queue_s": f.non_negative,
    },
    _check_burst,
)


def _client_limits(value: object, path: str) -> ClientLimits:
    limits: ClientLimits = _client_limits_fields(value, path)
    if limits.requests_per_second is not None and limits.burst is None:
        # A bucket must hold at least one whole request, or 0.5 rps could never admit anything.
        return replace(limits, burst=max(1, math.ceil(limits.requests_per_second)))
    return limits


def _target(value: object, path: str) -> Target:
    parsers = {
        "provider": f.string,
        "model": f.string,  # opaque: never split on ':' or '/'
        "priority": lambda raw, p: f.integer(raw, p, ge=0),
        "weight": f.positive,
    }
    return Target(**f.fields(f.mapping(value, path), path, parsers, required=("provider", "model")))


def _targets(value: object, path: str) -> tuple[Target, ...]:
    items = f.sequence(value, path, "a list of targets")
    if not items:
        raise Invalid("must list at least one target", path)
    return tuple(_target(raw, f.item(path, i)) for i, raw in enumerate(items))


_adaptive = f.block(AdaptivePolicy, {
    "half_life_s": f.positive,
    "explore_percent": lambda value, path: f.number(value, path, ge=0, le=50),
})
_hedge = f.block(HedgePolicy, {
    "after_s": f.positive,
    "after_quantile": f.optional(lambda value, path: f.number(value, path, gt=0, le=1)),
    "max_percent": lambda value, path: f.number(value, path, gt=0, le=100),
})


def _route(name: str, value: object, path: str) -> Route:
    parsers = {
        "targets": _targets,
        "retry": _retry,
        "deadline_s": f.positive,
        "ttft_s": f.optional(f.positive),
        "strategy": lambda raw, p: f.choice(raw, p, ("weighted", "least_busy", "adaptive")),
        "adaptive": _adaptive,
        "hedge": f.optional(_hedge),
    }
    return Route(name=name, **f.fields(f.mapping(value, path), path, parsers, required=("targets",)))


def _routes(value: object, path: str) -> Mapping[str, Route]:
    return MappingProxyType({name: _route(name, raw, entry_path)
                             for name, raw, entry_path in f.named_entries(value, path, "route")})


def _allowed_routes(value: object, path: str) -> tuple[str, ...]:
    return tuple(f.string(raw, f.item(path, i))
                 for i, raw in enumerate(f.sequence(value, path, "a list of route names")))


def _version(value: object, path: str) -> int:
    version = f.integer(value, path)
    if version != SUPPORTED_VERSION:
        raise Invalid(f"unsupported policy version {f.describe(version)}; "
                      f"this router reads version {SUPPORTED_VERSION}", path)
    return version


class _Builder:
    """The parts of validation that need the environment (secrets named by `*_env` keys)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def policy(self, data: Mapping[Any, Any], source: str) -> Policy:
        parsers: dict[str, f.Parser] = {
            "version": _version,
            "providers": self._providers,
            "routes": _routes,
            "clients": self._clients,
            "retry_budget": _retry_budget,
            "state": _state,
            "server": self._server,
        }
        values = f.fields(data, "", parsers, required=("providers", "routes"))
        policy = Policy(**values, source=source)
        _check_references(policy)
        return policy

    def _server(self, value: object, path: str) -> ServerPolicy:
        given = f.fields(f.section(value, path), path, {**_SERVER_FIELDS, "admin": f.optional(self._admin)})
        return ServerPolicy(**given)

    def _admin(self, value: object, path: str) -> AdminPolicy:
        parsers = {
            "host": f.string,
            "port": lambda raw, p: f.integer(raw, p, ge=0, le=65535),
            "key_env": f.optional(lambda raw, p: f.secret_env(self._env, raw, p)),
        }
        given = f.fields(f.section(value, path), path, parsers)
        admin = AdminPolicy(**given)
        if admin.key_env is None and not f.is_loopback_host(admin.host):
            raise Invalid(f"is required when the admin listener's host ({admin.host}) is not loopback: the admin "
                          "API shows live state and can drain providers", f.join(path, "key_env"))
        return AdminPolicy(key=None if admin.key_env is None else self._env[admin.key_env], **given)

    def _providers(self, value: object, path: str) -> Mapping[str, Provider]:
        return providers(value, path, self._env)

    def _clients(self, value: object, path: str) -> tuple[Client, ...]:
        items = () if value is None else f.sequence(value, path, "a list of clients")
        clients = tuple(self._client(raw, f.item(path, i)) for i, raw in enumerate(items))
        _check_clients_distinct(clients, path)
        return clients

    def _client(self, value: object, path: str) -> Client:
        parsers = {
            "name": f.string,
            "key_env": f.optional(lambda raw, p: f.secret_env(self._env, raw, p)),
            "key_sha256": f.optional(f.key_sha256),
            "limits": _client_limits,
            "routes": f.optional(_allowed_routes),
        }
        given = f.fields(f.mapping(value, path), path, parsers, required=("name",))
        key_env, key_sha256 = given.get("key_env"), given.get("key_sha256")
        if key_env is not None and key_sha256 is not None:
            raise Invalid("set only one of `key_env` or `key_sha256`", f.join(path, "key_sha256"))
        if key_env is None and key_sha256 is None:
            raise Invalid("needs `key_env` (variable holding the key) or `key_sha256` (its digest)", path)
        return Client(key=None if key_env is None else self._env[key_env], **given)


def _check_clients_distinct(clients: tuple[Client, ...], path: str) -> None:
    """Names label metrics and keys identify callers: both must be unique."""
    names: dict[str, int] = {}
    digests: dict[str, int] = {}
    for index, client in enumerate(clients):
        client_path = f.item(path, index)
        if client.name in names:
            raise Invalid(f"duplicate client name `{client.name}` (also {f.item(path, names[client.name])})",
                          f.join(client_path, "name"))
        names[client.name] = index
        digest = client.key_sha256 or hashlib.sha256((client.key or "").encode()).hexdigest()
        if digest in digests:
            other = clients[digests[digest]].name
            field = "key_sha256" if client.key_sha256 else "key_env"
            raise Invalid(f"gives the same key as client `{other}`; every client needs its own key",
                          f.join(client_path, field))
        digests[digest] = index


def _check_references(policy: Policy) -> None:
    providers = list(policy.providers)
    for route in policy.routes.values():
        targets_path = f.join(f.join("routes", route.name), "targets")
        for index, target in enumerate(route.targets):
            if target.provider not in policy.providers:
                hint = f.suggestion(target.provider, providers)
                raise Invalid(f"unknown provider `{target.provider}`{hint}; "
                              f"known providers: {f.listing(providers)}",
                              f.join(f.item(targets_path, index), "provider"))
    routes = list(policy.routes)
    for client_index, client in enumerate(policy.clients):
        routes_path = f.join(f.item("clients", client_index), "routes")
        for index, name in enumerate(client.routes or ()):
            if name not in policy.routes:
                hint = f.suggestion(name, routes)
                raise Invalid(f"unknown route `{name}`{hint}; known routes: {f.listing(routes)}",
                              f.item(routes_path, index))
