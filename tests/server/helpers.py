"""Helpers for the daemon tests: request bodies, SSE parsing, raw HTTP, leak checks.
(Policies: tests/support/policies.py.)"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tests.support.policies import CANARY_KEY, CLIENT_KEY

LEAK_MARKERS = ("Traceback", 'File "', CANARY_KEY)


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
