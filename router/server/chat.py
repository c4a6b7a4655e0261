"""POST /v1/chat/completions, whichever front received it: authenticate, read the body, call the
engine, relay the answer, and write one access line.

Two fronts call `serve_chat`: the fast front (front.py) for the common well-formed request, and
the aiohttp handler (handlers.chat_completions) for everything else. Each gives an `Exchange`.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Protocol

from aiohttp import web

from router.engine.loop import outcome_of, usage_counts
from router.errors import InvalidRequest, RouterError, StreamInterrupted
from router.observe.observer import UNKNOWN_ROUTE
from router.request import ChatRequest, clean_request_id, parse_chat_request
from router.server.access_log import AccessRecord, log_access
from router.server.context import ServerContext
from router.server.errors import error_response, http_error_response, internal_error_response, router_error_response

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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

    async def read_body(self) -> bytes:
        """The whole body; raises BodyRefused."""
        ...

    async def open_stream(self, headers: dict[str, str]) -> None:
        """Start a 200 event stream (the head may wait for the first write)."""
        ...

    async def write(self, data: bytes) -> None: ...


async def serve_chat(state: ServerContext, exchange: Exchange) -> web.Response | None:
    """Answer one chat request: a response to send, or None once an event stream was relayed.

    The hot path: it does app.guarded's work inline (drain tracking, OpenAI-shaped crash answers)."""
    started = time.monotonic()
    task = asyncio.current_task()
    if task is not None:
        state.in_flight.add(task)
    record = AccessRecord(request_id=clean_request_id(exchange.headers.get("X-Request-ID")),
                          method=exchange.method, path=exchange.path)
    try:
        response = await _chat(exchange, state, record, started)
    except asyncio.CancelledError:
        if record.outcome != "success":  # a stream whose [DONE] was handed over stays a success
            record.outcome, record.status = "cancelled", 499  # the client went away
        raise
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = _fail(record, http_error_response(exchange, exc))
    except Exception as exc:
        response = _fail(record, internal_error_response(exchange, exc), "internal_error")
    finally:
        record.latency_ms = round((time.monotonic() - started) * 1000, 3)
        log_access(record)
        if task is not None:
            state.in_flight.discard(task)
    return response


async def _chat(exchange: Exchange, state: ServerContext, record: AccessRecord,
                started: float) -> web.Response | None:
    # Until the router has the request, refusals are counted here, under the route `unknown`.
    headers = {"x-request-id": record.request_id, "x-router-attempts": "0", "x-router-provider": "none"}
    if state.draining:
        return _refused(state, record, started, error_response(503, "the router is shutting down", code="draining",
                                                               retry_after=1, headers=headers))
    client = state.keys.identify(exchange.headers)
    if client is None and not state.keys.open:
        return _refused(state, record, started, error_response(401, "missing or invalid API key",
                                                               code="invalid_api_key", headers=headers))
    record.client = client or "-"
    try:
        body = await exchange.read_body()
    except BodyRefused as exc:
        response = error_response(exc.status, exc.message, code=exc.code, headers=headers)
        if exc.closing:
            # The rest of the body was not read (stalled, or undecodable), so the connection cannot be
            # reused; `Connection: close` keeps a keep-alive client from sending its next request into it.
            response.force_close()
        return _refused(state, record, started, response, exc.outcome)
    except asyncio.CancelledError:
        _count_refused(state, record.client, "cancelled", started)
        raise
    try:
        chat = parse_chat_request(body, request_id=record.request_id)
    except InvalidRequest as exc:
        return _refused(state, record, started, router_error_response(exc, headers), outcome_of(exc))
    record.stream = chat.stream
    if chat.stream:
        return await _stream(exchange, state, chat, client, record, headers, started)
    try:
        result = await state.router.chat(chat, client=client)
    except RouterError as exc:
        record.route = _route_of(state, chat)
        return _fail(record, _with_attempts(exc, headers), outcome_of(exc))
    record.route, record.provider, record.attempts = result.route, result.provider, result.attempts
    record.status, record.outcome = result.status, "success"
    record.prompt_tokens, record.completion_tokens = usage_counts(result.usage)
    headers["x-router-provider"] = result.provider
    headers["x-router-attempts"] = str(result.attempts)
    headers["Content-Type"] = result.content_type
    return web.Response(status=result.status, body=result.body, headers=headers)


async def _stream(exchange: Exchange, state: ServerContext, chat: ChatRequest, client: str | None,
                  record: AccessRecord, headers: dict[str, str], started: float) -> web.Response | None:
    stream = state.router.stream(chat, client=client)
    try:
        # Nothing, not even headers, goes to the client before the first upstream event:
        # until then a failure can still fail over invisibly.
        await stream.start()
    except RouterError as exc:
        record.route = _route_of(state, chat)
        return _fail(record, _with_attempts(exc, headers), outcome_of(exc))
    except BaseException:
        await stream.aclose()
        raise
    record.route, record.provider, record.attempts = stream.route, stream.provider, stream.attempts
    headers.update(SSE_HEADERS)
    headers["x-router-provider"] = stream.provider or "none"
    headers["x-router-attempts"] = str(stream.attempts)
    record.status = 200
    done = False  # the router hands over [DONE] once it has counted the request as a success
    try:
        await exchange.open_stream(headers)
        record.ttfb_ms = round((time.monotonic() - started) * 1000, 3)
        async for event in stream:
            done = event.is_done
            await exchange.write(event.raw)
        record.outcome = "success"
    except StreamInterrupted as exc:
        record.outcome = exc.reason  # the error event was already relayed; no [DONE]
    except asyncio.CancelledError:
        # Gone before [DONE]: cancelled. Gone while [DONE] was written: the answer was complete and is
        # counted as a success in /metrics, so the access line says so too (as for a JSON answer).
        record.outcome = "success" if done else "cancelled"
        raise
    except ConnectionError:
        # The client's reset was noticed between two events: the write failed before the front could
        # cancel the handler. Same ending as that cancellation, not an internal error.
        record.outcome = "success" if done else "cancelled"
        raise asyncio.CancelledError from None
    finally:
        await stream.aclose()
        record.attempts = stream.attempts
        usage = stream.transcript.usage if stream.transcript else None
        record.prompt_tokens, record.completion_tokens = usage_counts(usage)
    return None


def _route_of(state: ServerContext, chat: ChatRequest) -> str | None:
    # Failures are the lines operators search for, so they name the route too: the policy's
    # route name (a closed set), never the client's raw `model`; None when no route matches.
    route = state.router.policy.find_route(chat.model)
    return route.name if route is not None else None


def _with_attempts(exc: RouterError, headers: dict[str, str]) -> web.Response:
    attempts = getattr(exc, "attempts", 0)
    provider = getattr(exc, "provider", None)
    headers["x-router-attempts"] = str(attempts)
    if provider:
        headers["x-router-provider"] = provider
    return router_error_response(exc, headers)


def _refused(state: ServerContext, record: AccessRecord, started: float, response: web.Response,
             outcome: str | None = None) -> web.Response:
    """A request answered before it reached the router: logged, and counted under the route `unknown`."""
    _fail(record, response, outcome)
    _count_refused(state, record.client, record.outcome, started)
    return response


def _count_refused(state: ServerContext, client: str, outcome: str, started: float) -> None:
    observer = state.router.observer
    observer.request_started(UNKNOWN_ROUTE, client)
    observer.request_finished(UNKNOWN_ROUTE, client, outcome, time.monotonic() - started)


def _fail(record: AccessRecord, response: web.Response, outcome: str | None = None) -> web.Response:
    record.status = response.status
    record.attempts = int(response.headers.get("x-router-attempts", "0"))
    provider = response.headers.get("x-router-provider")
    record.provider = provider if provider and provider != "none" else None
    if outcome is not None:
        record.outcome = outcome
    else:
        try:
            record.outcome = json.loads(response.body)["error"]["code"] or "error"  # type: ignore[arg-type]
        except (ValueError, KeyError, TypeError):
            record.outcome = "error"
    return response
