"""A non-streaming chat completion: one attempt, and the result handed back to the caller."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from router import jsonio
from router.engine.classify import classify_exception, classify_status
from router.engine.loop import AttemptFailed, Call, Engine, parse_json_object
from router.engine.planner import Go
from router.upstream.errors import TransportError
from router.upstream.transport import Outgoing, Reply


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


async def attempt_completion(engine: Engine, call: Call, go: Go) -> ChatResult:
    target = go.target
    state = call.snapshot.ledger
    permit = await engine.admit_target(call, go)
    provider = call.snapshot.policy.providers[target.provider]
    upstream_model = target.upstream_model(call.request.model)
    started = engine.clock.monotonic()
    ttfb: float | None = None
    reply: Reply | None = None
    body = b""
    payload: dict[str, Any] | None = None
    state.begin(target)
    try:
        outgoing = Outgoing(provider=provider, body=call.request.body_for(upstream_model),
                            request_id=call.request.request_id, stream=False, deadline=call.deadline)
        try:
            reply = await engine.transport.send(outgoing)
            ttfb = engine.clock.monotonic() - started
            body = await reply.read()
        except TransportError as exc:
            verdict = classify_exception(exc)
        else:
            if 200 <= reply.status < 300:
                payload = parse_json_object(body)
            verdict = classify_status(reply.status, reply.headers, body, now_wall=engine.clock.wall(),
                                      payload=payload)
    except BaseException as exc:
        # Cancelled (or a bug) mid-attempt: the attempt says nothing about the provider's health.
        state.breaker(target).on_neutral(permit)
        engine.abandoned(call, target, exc, started=started, ttfb=ttfb)
        raise
    finally:
        state.end(target)
        if reply is not None:
            reply.close()
    engine.record(call, target, permit, verdict, started=started, ttfb=ttfb)
    if not verdict.ok or payload is None:
        raise AttemptFailed(verdict, target, body=body)
    engine.settle_tokens(call, target, payload.get("usage"))
    assert reply is not None
    return ChatResult(body=body, status=reply.status,
                      content_type=reply.headers.get("Content-Type", "application/json"),
                      provider=target.provider, model=upstream_model, attempts=call.progress.attempts,
                      request_id=call.request.request_id, route=call.route.name, _payload=payload)
