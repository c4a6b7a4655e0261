"""Helpers for the daemon tests: policies pointing at fake providers, bodies, SSE parsing, leak checks.

Policies are written as YAML and loaded with the real loader, so every test also
goes through the validation a policy file does. Timeouts and backoffs are small so
the suite stays fast; a test overrides only what it is about.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Iterable, Mapping, Sequence
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
FAST_RETRY = {"base_interval_s": 0.01, "max_interval_s": 0.05}
LENIENT_BREAKER = {"consecutive_failures": 100, "base_ejection_s": 1.0, "max_ejection_s": 1.0}
LEAK_MARKERS = ("Traceback", 'File "', CANARY_KEY)


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


def chat_body(content: str = "Hello", *, model: str = "chat", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def bearer(key: str = CLIENT_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def sse_data(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    out: list[str] = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line[5:].lstrip() for line in block.split(b"\n") if line.startswith(b"data:")]
        if lines:
            out.append(b"\n".join(lines).decode())
    return out


def sse_text(payloads: Sequence[str]) -> str:
    """The joined `delta.content` of choice 0."""
    parts: list[str] = []
    for data in payloads:
        try:
            event = json.loads(data)
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        for choice in event.get("choices") or ():
            content = (choice.get("delta") or {}).get("content")
            if isinstance(content, str):
                parts.append(content)
    return "".join(parts)


def assert_openai_error(body: bytes | Mapping[str, Any], *, code: str | None = None) -> dict[str, Any]:
    """`{"error": {"message", "type", "param", "code"}}` with a non-empty message; returns the error."""
    data = json.loads(body) if isinstance(body, bytes | bytearray) else dict(body)
    assert isinstance(data, dict) and set(data) == {"error"}, data
    error = data["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    if code is not None:
        assert error["code"] == code, error
    assert_no_leak(body if isinstance(body, bytes | bytearray) else json.dumps(data).encode())
    return error


def assert_no_leak(*texts: bytes | str | Iterable[str]) -> None:
    for text in texts:
        if isinstance(text, bytes | bytearray):
            value = bytes(text).decode("utf-8", "replace")
        elif isinstance(text, str):
            value = text
        else:
            value = "\n".join(text)
        for marker in LEAK_MARKERS:
            assert marker not in value, f"{marker!r} leaked in: {value[:500]}"


async def read_response(reader: asyncio.StreamReader, within_s: float = 3.0) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body; status 0 if the server closed instead."""
    async with asyncio.timeout(within_s):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return 0, {}, b""
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            if ":" in line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        return int(status_line.split()[1]), headers, body


def request_head(port: int, length: int) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()


def port_of(server: Any) -> int:
    """The port of a `Daemon` (tests.server.conftest)."""
    return int(server.base_url.rsplit(":", 1)[1])
