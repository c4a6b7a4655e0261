"""A non-streaming chat completion: attempts until one answers, and the result handed back to the caller."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from router import jsonio
from router.engine.attempt import Attempt
from router.engine.call import Call
from router.engine.classify import classify_status
from router.engine.hedging import run_attempts
from router.engine.loop import Engine
from router.upstream.transport import Reply


@dataclass(frozen=True, slots=True)
class ChatResult:
    """The provider's answer exactly as it sent it, plus where it came from."""

    body: bytes
    status: int
    content_type: str
    provider: str
    model: str  # the upstream model that answered
    attempts: int
    request_id: str
    route: str
    _payload: dict[str, Any] | None = field(default=None, repr=False)  # the router's fast parse (jsonio)

    @property
    def data(self) -> dict[str, Any]:
        """The body parsed as JSON (ASI1's `thought`, `executable_data`, ... included)."""
        return json.loads(self.body)  # not jsonio: every number exactly as sent, however large

    @property
    def usage(self) -> object:
        """The body's `usage` block as the provider sent it (None when absent)."""
        payload = self._payload if self._payload is not None else jsonio.loads(self.body)
        return payload.get("usage") if isinstance(payload, dict) else None

    @property
    def text(self) -> str | None:
        """The first choice's message content, the common case."""
        try:
            content = self.data["choices"][0]["message"].get("content")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return content if isinstance(content, str) else None


async def complete(engine: Engine, call: Call) -> ChatResult:
    """Run the attempts of a non-streaming request until one answers; raises the final error otherwise."""
    request = call.request
    if call.route.hedge is None:
        # The plain loop, without run_attempts' race machinery: ~1 µs a request (bench/README.md).
        async for attempt in engine.attempts(call):
            with attempt:
                answered = await _answer(engine, attempt)
            if attempt.failure is None:
                break
        else:
            raise AssertionError("the attempts end with a result or the final error")
    else:
        answered = await run_attempts(engine, call, lambda attempt: _answer(engine, attempt), answered=_head_arrived)
    attempt, reply, body, payload = answered
    return ChatResult(body=body, status=reply.status, content_type=_content_type(reply.headers.get("Content-Type")),
                      provider=attempt.target.provider, model=attempt.upstream_model,
                      attempts=call.progress.attempts, request_id=request.request_id, route=call.route.name,
                      _payload=payload)


async def _answer(engine: Engine, attempt: Attempt) -> tuple[Attempt, Reply, bytes, dict[str, Any]]:
    """One attempt of a JSON request, up to its checked answer (its commit point)."""
    reply = await attempt.send(attempt.call.request.body_for(attempt.upstream_model), stream=False)
    body = await reply.read()
    payload = parse_json_object(body) if 200 <= reply.status < 300 else None
    attempt.check(classify_status(reply.status, reply.headers, body, now_wall=engine.clock.wall(),
                                  payload=payload), body)
    assert payload is not None  # a 2xx that passed the check is a JSON object
    attempt.settle(payload.get("usage"))
    return attempt, reply, body, payload


def _head_arrived(attempt: Attempt) -> bool:
    return attempt.ttfb is not None


def _content_type(value: str | None) -> str:
    """The provider's Content-Type if it is printable ASCII (it is relayed as a header); else JSON's."""
    if value == "application/json" or (value and value.isascii() and value.isprintable()):
        return value
    return "application/json"


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = jsonio.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
