"""Streaming chat completions: free failover before the commit point, honesty after it.

Before the first event reaches the caller (the commit point) a stream attempt is
like any other: errors, an error as the first event, a slow first token
(`ttft_s`) all fail over invisibly. After it:

- a provider `[DONE]`, or a `finish_reason` followed by a clean end (or a stall,
  since the answer is already complete) ends the caller's stream with `[DONE]`;
- a cut, a stall, an error event or a clean EOF without `finish_reason` is a
  truncation, recorded against the attempt like any verdict (a stall or another
  fail-over verdict takes the target out of the plan; a cut may go back to it within
  `max_attempts_per_target`). The stream continues on a `supports_prefill` target
  (conversation + the text so far as an assistant message; only the continuation is
  relayed, so the caller sees the whole answer exactly once), or ends with an
  explicit SSE error event and `StreamInterrupted`, never with `[DONE]`.
Malformed events are skipped and counted.

The relay works a read at a time: what one upstream read brought (a batch of events)
is checked and passed on as one batch, so a server writes it to its client in one write,
as a bare relay would (`ChatStream.batches`). A burst of one-line events in one read comes
from the transport as an `SseRun`, checked in one pass when its events are plain content
deltas (engine/plain_runs.py) and event by event otherwise.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from router import jsonio
from router.engine.attempt import Attempt
from router.engine.call import Call
from router.engine.classify import (
    SUCCESS,
    Action,
    Reason,
    Verdict,
    classify_error_payload,
    classify_exception,
    classify_status,
)
from router.engine.hedging import run_attempts
from router.engine.loop import Engine
from router.engine.outcome import CANCELLED
from router.engine.outcome import SUCCESS as SUCCESS_OUTCOME
from router.engine.plain_runs import Batch, Plain, event_count, screen
from router.engine.transcript import Transcript, is_empty_delta, payload_of
from router.errors import RouterError, StreamInterrupted
from router.request import ChatRequest
from router.upstream.errors import FirstTokenTimeout, TransportError
from router.upstream.sse import DONE_EVENT, SseEvent, SseRun, encode_event, one_by_one

_CLEAN_EOF_CUT = Verdict(Action.RETRY, Reason.STREAM_CUT, breaker_failure=True,
                         message="stream ended before finish_reason")
_EMPTY_STREAM = Verdict(Action.RETRY, Reason.INVALID_RESPONSE, breaker_failure=True,
                        message="stream ended before its first event")
_DONE = SseEvent(raw=DONE_EVENT, data="[DONE]")

# Decides the request's outcome (a label, or the exception it ended with) and returns unused client tokens.
Finish = Callable[[Call, str | BaseException], None]


@dataclass(slots=True)
class _Open:
    """A stream attempt that produced its first event (its attempt is committed)."""

    attempt: Attempt
    batches: AsyncIterator[Batch]
    first: Batch  # the rest of the batch, from the first event on (malformed ones before it skipped)
    first_payload: dict[str, Any]
    first_at: float  # when the first event arrived: the start of the first chunk gap
    events_closed: bool = False


class ChatStream:
    """An async iterator of SSE events for one streaming request.

    `await start()` runs everything up to the commit point and raises the typed
    error if no provider produced a first event; iteration starts it implicitly.
    Use `async with` (or `aclose()`) to release the upstream connection early.
    """

    def __init__(self, engine: Engine, request: ChatRequest, admit: Callable[[], Awaitable[Call]],
                 finish: Finish) -> None:
        self._engine = engine
        self._request = request
        self._admit = admit  # runs on start(): route lookup, client limits
        self._finish_call = finish
        self._call: Call | None = None
        self._open: _Open | None = None
        self._started = False
        self._finished = False
        self._prefill: str | None = None
        self._iterator: AsyncIterator[SseEvent] | AsyncIterator[Batch] | None = None
        self.transcript = Transcript()

    # -- public surface ----------------------------------------------------------------------
    @property
    def provider(self) -> str | None:
        """The provider whose first event committed the stream (None before start)."""
        return self._open.attempt.target.provider if self._open else None

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
        self._call = await self._admit()
        try:
            self._open = await self._open_stream()
        except BaseException as exc:
            self._finish(exc)
            raise

    def __aiter__(self) -> AsyncIterator[SseEvent]:
        """The events one by one."""
        if self._iterator is None:
            self._iterator = self._events()
        return self._iterator  # type: ignore[return-value]

    def batches(self) -> AsyncIterator[Batch]:
        """The same events, grouped as they arrived: one list per upstream read, for a server to write
        to its client in one write (each item's `raw`; a burst of plain events is one `SseRun`).
        Iterate either this or the stream itself, not both."""
        if self._iterator is None:
            self._iterator = self._relay()
        return self._iterator  # type: ignore[return-value]

    def _events(self) -> AsyncIterator[SseEvent]:
        return one_by_one(self._relay())

    async def __aenter__(self) -> ChatStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._iterator is not None:
            await self._iterator.aclose()  # type: ignore[attr-defined]
        await self._abandon_current()
        self._finish(CANCELLED)

    def __del__(self) -> None:
        # Started, then dropped without aclose(): do the synchronous part of closing, so the request and
        # its attempt are still reported once and the target's in-flight count does not leak.
        if self._finished or self._call is None:
            return
        if self._open is not None:
            self._open.attempt.abandon()
        self._finish(CANCELLED)

    # -- before the commit point -------------------------------------------------------------
    async def _open_stream(self) -> _Open:
        """Attempts until one produces its first event; raises the final error otherwise."""
        engine, call = self._engine, self._require_call()
        if call.route.hedge is not None:
            return await run_attempts(engine, call, self._open_one, answered=_committed, discard=_discard)
        async for attempt in engine.attempts(call):  # the plain loop: see completion.complete
            with attempt:
                opened = await self._open_one(attempt)
            if attempt.committed:
                return opened
        raise AssertionError("the attempts end with a committed stream or the final error")

    async def _open_one(self, attempt: Attempt) -> _Open:
        """One attempt of a stream, up to its first event (the commit point)."""
        engine, prefill = self._engine, self._prefill
        request, model = attempt.call.request, attempt.upstream_model
        body = request.body_for(model) if prefill is None else request.continuation_body(model, prefill)
        reply = await attempt.send(body, stream=True)
        if not 200 <= reply.status < 300:
            error_body = await reply.read()
            attempt.fail(classify_status(reply.status, reply.headers, error_body, now_wall=engine.clock.wall(),
                                         continuation=prefill is not None), error_body)
        batches = reply.batches()
        first, payload = await self._first_event(batches, attempt)
        attempt.commit()
        return _Open(attempt=attempt, batches=batches, first=first, first_payload=payload,
                     first_at=engine.clock.monotonic())

    async def _first_event(self, batches: AsyncIterator[Batch], attempt: Attempt) -> tuple[Batch, dict]:
        """The batch from the first well-formed event on, and that event's payload."""
        call, engine = self._require_call(), self._engine
        ttft_s = call.route.ttft_s
        try:
            while True:
                try:
                    if ttft_s is None:
                        batch = await anext(batches)
                    else:
                        remaining = attempt.started + ttft_s - engine.clock.monotonic()
                        async with asyncio.timeout(max(remaining, 0.0)):
                            batch = await anext(batches)
                except StopAsyncIteration:
                    attempt.fail(_EMPTY_STREAM)
                except TimeoutError:
                    raise FirstTokenTimeout(f"no first token within {ttft_s}s") from None
                index = -1
                while (index := index + 1) < len(batch):
                    event = batch[index]
                    if event.__class__ is SseRun:  # the first event is checked on its own: take it out
                        event, rest = event.split_first()  # type: ignore[union-attr]
                        batch = [*batch[:index], event, *([rest] if rest is not None else ()), *batch[index + 1:]]
                    assert event.__class__ is SseEvent
                    if event.is_done:
                        attempt.fail(_EMPTY_STREAM)
                    payload = payload_of(event)
                    if payload is None:
                        engine.observer.malformed_event(attempt.target.provider)
                        continue
                    if payload.get("error"):
                        attempt.fail(classify_error_payload(payload, {}, now_wall=engine.clock.wall(),
                                                            continuation=self._prefill is not None))
                    return (batch if index == 0 else batch[index:]), payload
        except BaseException:
            await batches.aclose()  # type: ignore[attr-defined]
            raise

    # -- after the commit point --------------------------------------------------------------
    async def _relay(self) -> AsyncIterator[Batch]:
        await self.start()
        transcript = self.transcript
        loads = jsonio.loads
        observer, monotonic = self._engine.observer, self._engine.clock.monotonic
        try:
            while True:
                opened = self._open
                assert opened is not None
                continuing = self._prefill is not None
                first = opened.first[0]
                cut = None
                batch: Batch | None = opened.first
                batches, provider = opened.batches, opened.attempt.target.provider
                if (count := event_count(batch)) > 1:  # came with the first event: gaps of zero
                    observer.stream_chunk_gap(provider, 0.0, count - 1)
                last = opened.first_at
                while True:
                    if batch is None:
                        # The next read, inline (no iterator in between: this runs once per upstream read).
                        # The gap before each event after the first is reported: one clock read per read,
                        # and the events that came in the same read have gaps of zero.
                        try:
                            batch = await anext(batches)
                        except StopAsyncIteration:
                            break
                        except TransportError as exc:
                            cut = classify_exception(exc)
                            break
                        now = monotonic()
                        observer.stream_chunk_gap(provider, now - last, event_count(batch))
                        last = now
                    if batch[-1].__class__ is SseRun:
                        # Per event when continuing (ids are rewritten), or while the stream's id is still to
                        # be learnt from an event (the first one's is, before any run: it is checked alone).
                        batch = screen(batch, per_event=continuing or (
                            transcript.id is None and opened.first_payload.get("id").__class__ is not str))
                    passed: Batch = []
                    for event in batch:
                        if event.__class__ is Plain:  # checked as a whole: nothing in it but text
                            transcript.track_plain(event.texts, event.run.count)  # type: ignore[union-attr]
                            passed.append(event.run)  # type: ignore[union-attr]
                            continue
                        if event.data == "[DONE]":  # SseEvent.is_done, without a call per event
                            await self._complete(opened)
                            passed.append(_DONE)
                            yield passed
                            return
                        if event is first:  # parsed before the commit point: not again
                            payload = opened.first_payload
                        else:  # payload_of, inline: this loop runs once per event
                            try:
                                payload = loads(event.data)
                            except (ValueError, RecursionError):
                                payload = None
                            if payload.__class__ is not dict:
                                observer.malformed_event(provider)
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
                        passed.append(event)
                    batch = None
                    if passed:
                        yield passed  # what came before an error event in the same read is the caller's
                    if cut is not None:
                        break
                if cut is None and not transcript.finished:
                    cut = _CLEAN_EOF_CUT  # the provider's stream ended without a finish_reason
                if cut is None or transcript.finished:
                    await self._complete(opened)
                    yield [_DONE]
                    return
                if not await self._continue(opened, cut):
                    error = self._interrupted(opened, cut)
                    yield [SseEvent(raw=error.event, data=error.event[6:].decode().strip())]
                    raise error
        finally:
            await self._abandon_current()
            self._finish(CANCELLED)

    async def _continue(self, opened: _Open, cut: Verdict) -> bool:
        """Record the cut, then try to resume on a prefill-capable target. False: end with an error."""
        call, transcript = self._require_call(), self.transcript
        await _close_events(opened)
        opened.attempt.end(cut)
        if not transcript.continuable:
            return False
        providers = call.snapshot.policy.providers
        call.tiers = tuple(tier for tier in (
            tuple(t for t in level if providers[t.provider].supports_prefill) for level in call.tiers) if tier)
        if not call.tiers:
            return False
        self._prefill = "".join(transcript.text)
        self._open = None
        try:
            self._open = await self._open_stream()
        except RouterError:
            return False
        return True

    # -- endings -----------------------------------------------------------------------------
    async def _complete(self, opened: _Open) -> None:
        call = self._require_call()
        await _close_events(opened)
        usage = self.transcript.usage
        if usage:
            opened.attempt.settle(usage)
        else:  # no usage chunk: estimate from what was streamed so reservations still settle
            estimate = {"prompt_tokens": len(call.request.body) // 4,
                        "completion_tokens": len("".join(self.transcript.text)) // 4}
            opened.attempt.settle(estimate, measured=False)
        opened.attempt.end(SUCCESS)
        self._finish(SUCCESS_OUTCOME)

    def _interrupted(self, opened: _Open, cut: Verdict) -> StreamInterrupted:
        message = (f"upstream stream interrupted after {self.transcript.chunks} chunks "
                   f"({cut.reason} at {opened.attempt.target.provider}); the answer is incomplete")
        event = encode_event(json.dumps({"error": {"message": message, "type": "upstream_error",
                                                   "param": None, "code": "stream_interrupted"}}))
        error = StreamInterrupted(message, attempts=self.attempts, provider=opened.attempt.target.provider,
                                  reason=str(cut.reason), event=event)
        self._finish(error)
        return error

    def _require_call(self) -> Call:
        assert self._call is not None, "stream not started"
        return self._call

    async def _abandon_current(self) -> None:
        opened = self._open
        if opened is None:
            return
        try:
            await _close_events(opened)
        finally:
            opened.attempt.abandon()  # no-op once the attempt ended

    def _finish(self, outcome: str | BaseException) -> None:
        if self._finished or self._call is None:
            return
        self._finished = True
        self._finish_call(self._call, outcome)


def _committed(attempt: Attempt) -> bool:
    return attempt.committed


async def _discard(opened: _Open) -> None:
    """A stream that reached its first event but lost a hedge race: closed, and its attempt let go."""
    try:
        await _close_events(opened)
    finally:
        opened.attempt.abandon()


async def _close_events(opened: _Open) -> None:
    if not opened.events_closed:
        opened.events_closed = True
        await opened.batches.aclose()  # type: ignore[attr-defined]
