"""The deployment the canary scenarios run against, and faults that echo secrets back.

Three providers, each with its own canary key from the environment:

- `alpha` and `beta` check their key (a wrong one gets 401), like real providers;
- `gamma` is a provider whose answers are scripted per test.

Routes: `chat` (alpha, then beta), `solo` (alpha only, one attempt, so its error
reaches the caller), `bad` (gamma, then beta), and the glob `*:echo` (alpha,
forwarding the requested name). Clients: `web` and `batch` by key variable (batch
may only use `chat` and has a burst of 1), `ops` by the digest of its key.

The echoing faults play a provider in debug mode that puts what it received, our
key included, into its error messages, response headers and stream events: the
router must not carry any of it to its callers or its logs.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from router.mock import FakeProvider, Hit, Status
from router.policy import parse_policy
from router.policy.model import Policy
from tests.security.canaries import (
    ALL_CANARIES,
    CANARY_ENV,
    DIGEST_CLIENT_SHA256,
    PROVIDER_KEYS,
)
from tests.support.policies import FAST_RETRY, FAST_TIMEOUTS, LENIENT_BREAKER, policy_text

KEY_ENV = {name: env for env, name in zip(PROVIDER_KEYS, ("alpha", "beta", "gamma"), strict=True)}
ONE_TRY = {"max_attempts": 1, "max_attempts_per_target": 1, "wait_for_preferred_s": 0}
TWO_TARGETS = {"max_attempts": 2, "max_attempts_per_target": 1, "wait_for_preferred_s": 0}

# (status, error code) pairs a provider may answer; every one is run with an echoing body.
ERROR_ANSWERS: list[tuple[int, str | None]] = [
    (400, None), (400, "invalid_request_error"), (400, "content_policy_violation"),
    (400, "context_length_exceeded"), (401, "invalid_api_key"), (402, None), (403, None), (404, "model_not_found"),
    (405, None), (408, None), (409, None), (410, None), (413, None), (415, None), (422, None),
    (429, "rate_limit_exceeded"), (429, "insufficient_quota"), (500, "server_error"), (501, None), (502, None),
    (503, None), (504, None), (520, None),
]


def policy_yaml(alpha: FakeProvider | str, beta: FakeProvider | str, gamma: FakeProvider | str, *,
                idle_s: float | None = None, first_byte_s: float | None = None,
                clients: bool = True, **top: Any) -> str:
    def provider(name: str, fake: FakeProvider | str, **extra: Any) -> dict[str, Any]:
        timeouts = dict(FAST_TIMEOUTS)
        if idle_s is not None:
            timeouts["idle_s"] = idle_s
        if first_byte_s is not None:
            timeouts["first_byte_s"] = first_byte_s
        base_url = fake if isinstance(fake, str) else fake.base_url
        return {"base_url": base_url, "api_key_env": KEY_ENV[name], "timeouts": timeouts,
                "breaker": dict(LENIENT_BREAKER), **extra}

    def route(*names: str, retry: Mapping[str, Any], model: str | None = None) -> dict[str, Any]:
        return {"targets": [{"provider": name, "model": model or f"{name}-model", "priority": i}
                            for i, name in enumerate(names)],
                "retry": {**FAST_RETRY, **retry}, "deadline_s": 10}

    providers = {"alpha": provider("alpha", alpha, supports_prefill=True),
                 "beta": provider("beta", beta, supports_prefill=True),
                 "gamma": provider("gamma", gamma)}
    routes = {"chat": route("alpha", "beta", retry=TWO_TARGETS), "solo": route("alpha", retry=ONE_TRY),
              "bad": route("gamma", "beta", retry=TWO_TARGETS),
              "*:echo": route("alpha", retry=ONE_TRY, model="{model}")}
    if clients:
        top.setdefault("clients", [
            {"name": "web", "key_env": "SEC_WEB_KEY"},
            {"name": "batch", "key_env": "SEC_BATCH_KEY", "routes": ["chat"],
             "limits": {"requests_per_second": 0.01, "burst": 1}},
            {"name": "ops", "key_sha256": DIGEST_CLIENT_SHA256},
        ])
    return policy_text(providers, routes, **top)


def load(text: str) -> Policy:
    return parse_policy(text, source="<security>", env=CANARY_ENV)


def echo_message(key: str) -> str:
    return f"Incorrect API key provided: {key}. Request headers were: Authorization: Bearer {key}"


def echo_headers(key: str) -> dict[str, str]:
    return {"WWW-Authenticate": f'Bearer realm="api", error="invalid_token", token="{key}"',
            "X-Debug-Authorization": f"Bearer {key}", "Set-Cookie": f"session={key}; HttpOnly"}


def echoing_status(status: int, code: str | None, key: str) -> Status:
    """An error answer that repeats our key in its message and its headers."""
    return Status(status, code, message=echo_message(key), headers=echo_headers(key), param=key)


def sse(*payloads: object) -> bytes:
    return b"".join(b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n" for p in payloads)


def chunk(content: str, finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content} if content else {}, "finish_reason": finish}]}


def sse_answer(body: bytes, key: str) -> Status:
    """A 200 event stream with exactly these bytes (scripted upstream SSE)."""
    return Status(200, body=body, headers={"Content-Type": "text/event-stream", **echo_headers(key)})


def error_event(code: str, key: str, status: int | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"message": echo_message(key), "type": "invalid_request_error", "code": code,
                             "param": key}
    if status is not None:
        error["status"] = status
    return {"error": error}


def hit_text(hit: Hit) -> str:
    headers = "\n".join(f"{name}: {value}" for name, value in hit.headers_ci.items())
    return headers + "\n" + hit.body.decode("utf-8", "replace")


def assert_provider_saw_only_its_own_key(fake: FakeProvider, key: str) -> None:
    """Each attempt carried exactly `Authorization: Bearer <its key>` and no other canary anywhere."""
    for hit in fake.hits:
        assert hit.headers_ci.getall("Authorization") == [f"Bearer {key}"], dict(hit.headers_ci)
        others = [secret for secret in ALL_CANARIES if secret != key]
        text = hit_text(hit)
        for secret in others:
            for piece in (secret, secret[:8], secret[-8:]):
                assert piece not in text, f"{fake.name} received {piece!r}"
