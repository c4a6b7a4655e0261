"""POST /v1/chat/completions, whichever front received it: authenticate, read the body, call the
engine, decide one `Answer`, have the front render it, and write one access line.

Two fronts call `serve_chat`: the fast front (front.py) for the common well-formed request, and
the aiohttp handler (handlers.chat_completions) for everything else. Each gives an `Exchange`,
which reads the request and renders the answer in its own way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Protocol

from router.engine.outcome import CANCELLED, INTERNAL_ERROR, SUCCESS, RequestRecord
from router.errors import InvalidRequest, RouterError, StreamInterrupted
from router.observe.observer import UNKNOWN_ROUTE
from router.request import ChatRequest, clean_request_id, parse_chat_request
from router.server.access_log import AccessRecord, log_access
from router.server.answer import SSE_HEADERS, Answer, error_answer, router_error_answer, router_headers
from router.server.context import ServerContext
from router.upstream.sse import DONE_EVENT

if TYPE_CHECKING:
    from router.upstream.sse import SseEvent, SseRun

log = logging.getLogger("router.server")


class BodyRefused(Exception):
    """The request body could not be had: answered with `status` (and the connection closed if `closing`)."""

    def __init__(self, status: int, message: str, *, code: str | None = None, outcome: str | None = None,
                 closing: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.outcome, self.closing = status, message, code, outcome, closing


class Exchange(Protocol):
    """One request as a front sees it, and the way back to its client."""

    method: str
    path: str

    @property
    def headers(self) -> Mapping[str, str]: ...  # case-insensitive

    @property
    def started(self) -> bool:
        """True once any byte of the answer went out: it can no longer be replaced by an error."""
        ...

    async def read_body(self) -> bytes:
        """The whole body; raises BodyRefused."""
        ...

    async def send(self, answer: Answer) -> None:
        """Render the answer: its head and body, or its head and the bytes of `events(answer)`."""
        ...

    def abort(self) -> None:
        """Cut the connection: an answer already begun cannot be completed."""
        ...


async def serve_chat(context: ServerContext, exchange: Exchange) -> None:
    """Answer one chat request through `exchange`, and log it.

    The hot path: it does app.guarded's work inline (drain tracking, OpenAI-shaped crash answers)."""
    received = time.monotonic()
    task = asyncio.current_task()
    if task is not None:
        context.in_flight.add(task)
    record = context.router.new_record()
    access = AccessRecord(request_id=clean_request_id(exchange.headers.get("X-Request-ID")),
                          method=exchange.method, path=exchange.path)
    answer: Answer | None = None
    try:
        answer = await _decide(context, exchange, record, access)
        if answer.stream is not None:  # committed: its head goes out with the first event
            access.ttfb_ms = round((time.monotonic() - received) * 1000, 3)
        await exchange.send(answer)
        record.finish(SUCCESS)  # a JSON answer delivered (every other ending was decided already)
    except asyncio.CancelledError:
        record.finish(CANCELLED)  # the client went away (a stream whose [DONE] was handed over stays a success)
        raise
    except ConnectionError:
        # The client's reset was noticed by a write before the front could cancel the handler: the same
        # ending as that cancellation, not an internal error.
        record.finish(CANCELLED)
        raise asyncio.CancelledError from None
    except Exception as exc:  # a bug: the client gets a 500 if nothing was sent yet, else a cut answer
        log.error("internal error serving %s %s: %s: %s", exchange.method, exchange.path, type(exc).__name__, exc)
        record.finish(INTERNAL_ERROR)  # (a stream past its [DONE] stays a success)
        if exchange.started:
            exchange.abort()
        else:
            answer = error_answer(record, access.request_id, 500, "internal error in the router",
                                  code="internal_error", close=True)
            await exchange.send(answer)
    finally:
        if answer is not None and answer.stream is not None:
            await answer.stream.aclose()
        _log(access, record, answer, received)
        if task is not None:
            context.in_flight.discard(task)


def events(answer: Answer) -> AsyncIterator[tuple[bytes, bool]]:
    """The bytes of an answer's event stream, for a front to write as they come: one piece per upstream
    read, so one client write per read, and whether the piece ends the stream (with `[DONE]`, always
    last). An interrupted stream yields its SSE error event and ends without `[DONE]`; the outcome is
    on the record either way. (The fast front runs the same loop inline: `piece`.)"""
    assert answer.stream is not None
    return _Pieces(answer.stream.batches())


def piece(batch: list[SseEvent | SseRun]) -> tuple[bytes, bool]:
    """One read's events as the bytes to write, and whether they end the stream (a stream's end is its
    own `[DONE]` event, never inside a run)."""
    return (batch[0].raw if len(batch) == 1 else b"".join([event.raw for event in batch]),
            batch[-1].raw == DONE_EVENT)


class _Pieces:
    """events(): a plain async iterator (an async generator costs the event loop's tracking)."""

    __slots__ = ("_batches",)

    def __init__(self, batches: AsyncIterator[list[SseEvent | SseRun]]) -> None:
        self._batches = batches

    def __aiter__(self) -> _Pieces:
        return self

    async def __anext__(self) -> tuple[bytes, bool]:
        try:
            batch = await anext(self._batches)
        except StreamInterrupted:
            raise StopAsyncIteration from None
        return piece(batch)


async def _decide(context: ServerContext, exchange: Exchange, record: RequestRecord,
                  access: AccessRecord) -> Answer:
    request_id = access.request_id
    if context.draining:
        record.finish("draining")
        return error_answer(record, request_id, 503, "the router is shutting down", code="draining",
                            retry_after=1)
    client = context.keys.identify(exchange.headers)
    if client is None and not context.keys.open:
        record.finish("invalid_api_key")
        return error_answer(record, request_id, 401, "missing or invalid API key", code="invalid_api_key")
    record.client = client or "-"
    if context.router.tracing is not None:  # the client's trace, continued (observe/tracing.py)
        record.traceparent = exchange.headers.get("traceparent")
    try:
        body = await exchange.read_body()
    except BodyRefused as exc:
        record.finish(exc.outcome or exc.code or "error")
        # The rest of the body was not read (stalled, or undecodable), so the connection cannot be reused;
        # `Connection: close` keeps a keep-alive client from sending its next request into it.
        return error_answer(record, request_id, exc.status, exc.message, code=exc.code, close=exc.closing)
    try:
        chat = parse_chat_request(body, request_id=request_id)
    except InvalidRequest as exc:
        record.fail(exc)
        return router_error_answer(record, request_id, exc)
    access.stream = chat.stream
    if chat.stream:
        return await _stream(context, chat, client, record)
    try:
        result = await context.router.chat(chat, client=client, record=record)
    except RouterError as exc:
        return router_error_answer(record, request_id, exc)
    headers = router_headers(record, request_id)
    headers["Content-Type"] = result.content_type
    return Answer(result.status, headers, record, result.body)


async def _stream(context: ServerContext, chat: ChatRequest, client: str | None, record: RequestRecord) -> Answer:
    stream = context.router.stream(chat, client=client, record=record)
    try:
        # Nothing, not even headers, goes to the client before the first upstream event:
        # until then a failure can still fail over invisibly.
        await stream.start()
    except RouterError as exc:
        return router_error_answer(record, chat.request_id, exc)
    except BaseException:
        await stream.aclose()
        raise
    headers = router_headers(record, chat.request_id)
    headers.update(SSE_HEADERS)
    return Answer(200, headers, record, stream=stream)


def _log(access: AccessRecord, record: RequestRecord, answer: Answer | None, received: float) -> None:
    now = time.monotonic()
    access.client = record.client
    access.route = record.route if record.route != UNKNOWN_ROUTE else None
    access.provider = record.provider
    access.attempts = record.attempts
    access.outcome = record.outcome or "unknown"
    access.prompt_tokens, access.completion_tokens = record.prompt_tokens, record.completion_tokens
    if record.outcome == CANCELLED:
        access.status = 499  # the client went away
    elif answer is not None:
        access.status = answer.status
    access.latency_ms = round((now - received) * 1000, 3)
    log_access(access)
