"""Streaming chat completions: free failover before the commit point, honesty after it.

Before the first event reaches the caller (the commit point) a stream attempt is
like any other: errors, an error as the first event, a slow first token
(`ttft_s`) all fail over invisibly. After it:

- a provider `[DONE]`, or a `finish_reason` followed by a clean end (or a stall,
  since the answer is already complete) ends the caller's stream with `[DONE]`;
- a cut, a stall, an error event or a clean EOF without `finish_reason` is a
  truncation: the stream continues on a `supports_prefill` target (conversation +
  the text so far as an assistant message; only the continuation is relayed, so
  the caller sees the whole answer exactly once), or ends with an explicit SSE
  error event and `StreamInterrupted`, never with `[DONE]`.
Malformed events are skipped and counted.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router.engine.classify import Action, Reason, Verdict, classify_error_payload, classify_exception, classify_status
from router.engine.loop import AttemptFailed, Call, Engine, outcome_of
from router.engine.planner import Go
from router.engine.transcript import Transcript, is_empty_delta, payload_of
from router.errors import RouterError, StreamInterrupted
from router.health.breaker import Permit
from router.policy.model import Target
from router.request import ChatRequest
from router.upstream.errors import FirstTokenTimeout, TransportError
from router.upstream.sse import DONE_EVENT, SseEvent, encode_event
from router.upstream.transport import Outgoing, Reply

_CLEAN_EOF_CUT = Verdict(Action.RETRY, Reason.STREAM_CUT, breaker_failure=True,
                         message="stream ended before finish_reason")
_EMPTY_STREAM = Verdict(Action.RETRY, Reason.INVALID_RESPONSE, breaker_failure=True,
                        message="stream ended before its first event")
_DONE = SseEvent(raw=DONE_EVENT, data="[DONE]")


@dataclass(slots=True)
class _Open:
    """A stream attempt that produced its first event."""

    target: Target
    reply: Reply
    events: AsyncIterator[SseEvent]
    first: SseEvent
    first_payload: dict[str, Any]
    started: float
    ttfb: float
    first_at: float  # when the first event arrived: the start of the first chunk gap
    closed: bool = False
    reported: bool = False  # its attempt_finished went out (a committed attempt reports when it ends)


class ChatStream:
    """An async iterator of SSE events for one streaming request.

    `await start()` runs everything up to the commit point and raises the typed
    error if no provider produced a first event; iteration starts it implicitly.
    Use `async with` (or `aclose()`) to release the upstream connection early.
    """

    def __init__(self, engine: Engine, request: ChatRequest,
                 admit: Callable[[], Awaitable[tuple[Call, Callable[[str], None]]]]) -> None:
        self._engine = engine
        self._request = request
        self._admit = admit  # runs on start(): route lookup, client limits
        self._call: Call | None = None
        self._on_finish: Callable[[str], None] | None = None
        self._open: _Open | None = None
        self._started = False
        self._prefill: str | None = None
        self._iterator: AsyncIterator[SseEvent] | None = None
        self._outcome: str | None = None
        self.transcript = Transcript()

    # -- public surface ----------------------------------------------------------------------
    @property
    def provider(self) -> str | None:
        """The provider whose first event committed the stream (None before start)."""
        return self._open.target.provider if self._open else None

    @property
    def attempts(self) -> int:
        return self._call.progress.attempts if self._call else 0

    @property
    def request_id(self) -> str:
        return self._request.request_id

    @property
    def route(self) -> str | None:
        return self._call.route.name if self._call else None

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        self._call, self._on_finish = await self._admit()
        try:
            self._open = await self._engine.run(self._call, self._attempt)
        except BaseException as exc:
            self._finish(outcome_of(exc))
            raise

    def __aiter__(self) -> AsyncIterator[SseEvent]:
        if self._iterator is None:
            self._iterator = self._relay()
        return self._iterator

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        await self._close_current()
        self._report_abandoned()
        if self._outcome is None:
            self._finish("cancelled")

    def __del__(self) -> None:
        # Started, then dropped without aclose(): do the synchronous part of closing, so the request and
        # its attempt are still reported once and the target's in-flight count does not leak.
        if self._outcome is not None or self._on_finish is None:
            return
        opened = self._open
        if opened is not None and not opened.closed:
            opened.closed = True
            opened.reply.close()
            self._require_call().snapshot.ledger.end(opened.target)
        self._report_abandoned()
        self._finish("cancelled")

    # -- before the commit point -------------------------------------------------------------
    async def _attempt(self, call: Call, go: Go) -> _Open:
        engine, target = self._engine, go.target
        state = call.snapshot.ledger
        permit = await engine.admit_target(call, go)
        provider = call.snapshot.policy.providers[target.provider]
        upstream_model = target.upstream_model(call.request.model)
        body = call.request.body_for(upstream_model) if self._prefill is None \
            else call.request.continuation_body(upstream_model, self._prefill)
        started = engine.clock.monotonic()
        reply: Reply | None = None
        ttfb: float | None = None
        state.begin(target)
        # The failure verdict is recorded once, after both try blocks: recording inside them would
        # catch its own AttemptFailed and count the attempt (breaker, in-flight, per-target) twice.
        failure: Verdict | None = None
        error_body = b""
        try:
            try:
                reply = await engine.transport.send(Outgoing(provider=provider, body=body,
                                                             request_id=call.request.request_id,
                                                             stream=True, deadline=call.deadline))
                ttfb = engine.clock.monotonic() - started
                if not 200 <= reply.status < 300:
                    error_body = await reply.read()
                    failure = classify_status(reply.status, reply.headers, error_body,
                                              now_wall=engine.clock.wall(), continuation=self._prefill is not None)
                else:
                    events = reply.events()
                    first, payload = await self._first_event(events, started, target.provider)
                    first_at = engine.clock.monotonic()
            except TransportError as exc:
                failure = classify_exception(exc)
            except AttemptFailed as failed:
                failure = failed.verdict
        except BaseException as exc:
            state.breaker(target).on_neutral(permit)
            state.end(target)
            engine.abandoned(call, target, exc, started=started, ttfb=ttfb)
            if reply is not None:
                reply.close()
            raise
        if failure is not None:
            if reply is not None:
                reply.close()  # e.g. an error as the first event: release the connection now
            return self._fail(call, target, permit, failure, started, ttfb, error_body)
        engine.record(call, target, permit, Verdict(Action.SUCCESS, Reason.OK, status=reply.status),
                      started=started, ttfb=ttfb, report=False)
        return _Open(target=target, reply=reply, events=events, first=first, first_payload=payload,
                     started=started, ttfb=ttfb, first_at=first_at)

    def _fail(self, call: Call, target: Target, permit: Permit, verdict: Verdict, started: float,
              ttfb: float | None, body: bytes = b"") -> _Open:
        call.snapshot.ledger.end(target)
        self._engine.record(call, target, permit, verdict, started=started, ttfb=ttfb)
        raise AttemptFailed(verdict, target, body=body)

    async def _first_event(self, events: AsyncIterator[SseEvent], started: float,
                           provider: str) -> tuple[SseEvent, dict]:
        call = self._require_call()
        ttft_s = call.route.ttft_s
        engine = self._engine
        while True:
            try:
                if ttft_s is None:
                    event = await anext(events)
                else:
                    remaining = started + ttft_s - engine.clock.monotonic()
                    async with asyncio.timeout(max(remaining, 0.0)):
                        event = await anext(events)
            except StopAsyncIteration:
                raise AttemptFailed(_EMPTY_STREAM, None) from None
            except TimeoutError:
                await events.aclose()  # type: ignore[attr-defined]
                raise FirstTokenTimeout(f"no first token within {ttft_s}s") from None
            if event.is_done:
                raise AttemptFailed(_EMPTY_STREAM, None)
            payload = payload_of(event)
            if payload is None:
                engine.observer.malformed_event(provider)
                continue
            if payload.get("error"):
                verdict = classify_error_payload(payload, {}, now_wall=engine.clock.wall(),
                                                 continuation=self._prefill is not None)
                raise AttemptFailed(verdict, None)
            return event, payload

    # -- after the commit point --------------------------------------------------------------
    async def _relay(self) -> AsyncIterator[SseEvent]:
        await self.start()
        transcript = self.transcript
        try:
            while True:
                opened = self._open
                assert opened is not None
                continuing = self._prefill is not None
                cut = None
                async for event in self._events_of(opened):
                    if isinstance(event, Verdict):
                        cut = event
                        break
                    if event is _DONE:
                        self._complete(opened)
                        yield _DONE
                        return
                    # The first event was parsed before the commit point: not again.
                    payload = opened.first_payload if event is opened.first else payload_of(event)
                    if payload is None:
                        self._engine.observer.malformed_event(opened.target.provider)
                        continue
                    if payload.get("error"):
                        cut = classify_error_payload(payload, {}, now_wall=self._engine.clock.wall())
                        break
                    if continuing:
                        if is_empty_delta(payload):
                            continue
                        if transcript.id is not None:
                            payload["id"] = transcript.id
                        # `data` must say what `raw` says (the original stream's id, not the continuation's).
                        data = json.dumps(payload, ensure_ascii=False)
                        event = SseEvent(raw=encode_event(data), data=data)
                    transcript.track(payload)
                    yield event
                else:
                    cut = None if transcript.finished else _CLEAN_EOF_CUT
                if cut is None or transcript.finished:
                    self._complete(opened)
                    yield _DONE
                    return
                if not await self._continue(opened, cut):
                    error = self._interrupted(opened, cut)
                    yield SseEvent(raw=error.event, data=error.event[6:].decode().strip())
                    raise error
        finally:
            await self._close_current()
            self._report_abandoned()
            if self._outcome is None:
                self._finish("cancelled")

    async def _events_of(self, opened: _Open) -> AsyncIterator[SseEvent | Verdict]:
        """The opened stream's events from the first on; failures come out as a Verdict.

        Reports the gap before each event after the first (one clock read per event)."""
        yield opened.first
        events = opened.events
        observer, monotonic, provider = self._engine.observer, self._engine.clock.monotonic, opened.target.provider
        last = opened.first_at
        while True:
            try:
                event = await anext(events)
            except StopAsyncIteration:
                return
            except TransportError as exc:
                yield classify_exception(exc)
                return
            now = monotonic()
            observer.stream_chunk_gap(provider, now - last)
            last = now
            yield _DONE if event.is_done else event

    async def _continue(self, opened: _Open, cut: Verdict) -> bool:
        """Try to resume on a prefill-capable target. False: the stream must end with an error."""
        engine, transcript = self._engine, self.transcript
        call = self._require_call()
        await self._close_current()
        state = call.snapshot.ledger
        breaker = state.breaker(opened.target)
        if cut.breaker_failure and breaker.on_failure(Permit(probe=False), engine.clock.monotonic()):
            engine.observer.breaker_changed(opened.target.provider, opened.target.key, "open")
        self._report(opened, str(cut.reason))
        call.progress.last_verdict = cut
        if not transcript.continuable:
            return False
        policy = call.snapshot.policy
        call.tiers = tuple(tier for tier in (
            tuple(t for t in level if policy.providers[t.provider].supports_prefill) for level in call.tiers) if tier)
        if not call.tiers:
            return False
        self._prefill = "".join(transcript.text)
        self._open = None
        try:
            self._open = await engine.run(call, self._attempt)
        except RouterError:
            return False
        return True

    # -- endings -----------------------------------------------------------------------------
    def _complete(self, opened: _Open) -> None:
        engine, call = self._engine, self._require_call()
        self._report(opened, str(Reason.OK))
        usage = self.transcript.usage
        if usage:
            engine.settle_tokens(call, opened.target, usage)
        else:  # no usage chunk: estimate from what was streamed so reservations still settle
            estimate = {"prompt_tokens": len(call.request.body) // 4,
                        "completion_tokens": len("".join(self.transcript.text)) // 4}
            engine.settle_tokens(call, opened.target, estimate, measured=False)
        self._finish("success")

    def _report(self, opened: _Open, outcome: str) -> None:
        """The committed attempt's attempt_finished, once."""
        if opened.reported:
            return
        opened.reported = True
        engine = self._engine
        engine.observer.attempt_finished(self._require_call().route.name, opened.target.provider, outcome,
                                         engine.clock.monotonic() - opened.started, opened.ttfb)

    def _report_abandoned(self) -> None:
        if self._open is not None and not self._open.reported:
            self._report(self._open, "cancelled")

    def _interrupted(self, opened: _Open, cut: Verdict) -> StreamInterrupted:
        message = (f"upstream stream interrupted after {self.transcript.chunks} chunks "
                   f"({cut.reason} at {opened.target.provider}); the answer is incomplete")
        event = encode_event(json.dumps({"error": {"message": message, "type": "upstream_error",
                                                   "param": None, "code": "stream_interrupted"}}))
        self._finish(str(cut.reason))
        return StreamInterrupted(message, attempts=self.attempts, provider=opened.target.provider,
                                 reason=str(cut.reason), event=event)

    def _require_call(self) -> Call:
        assert self._call is not None, "stream not started"
        return self._call

    async def _close_current(self) -> None:
        opened = self._open
        if opened is None or opened.closed:
            return
        opened.closed = True
        try:
            await opened.events.aclose()  # type: ignore[attr-defined]
        finally:
            opened.reply.close()
            self._require_call().snapshot.ledger.end(opened.target)

    def _finish(self, outcome: str) -> None:
        if self._outcome is None:
            self._outcome = outcome
            if self._on_finish is not None:
                self._on_finish(outcome)

