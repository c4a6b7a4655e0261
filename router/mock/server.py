"""The fake provider: an aiohttp.web server on loopback that applies scripted faults.

End-to-end tests count attempts and measure timing here, at the provider, not
inside the router, so every request is recorded as a `Hit` whether it was
answered, refused, cut or abandoned by the client.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import socket
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn, Self

from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from .answers import completion_for, stream_script
from .faults import Concrete, Fault, Hang, Ok, RequestView, Reset, SlowFirstByte, Status, Stream, resolve
from .responses import (
    DONE_EVENT,
    MALFORMED_EVENT,
    STATUS_FOR_CODE,
    dumps,
    error_body,
    sse,
)

__all__ = ["FakeProvider", "Hit"]

_JSON = "application/json"


@dataclass(eq=False)  # identity semantics: a hit is one attempt, and keys the in-flight task table
class Hit:
    """One chat-completions attempt as the provider saw it."""

    started: float  # time.monotonic() when the handler started
    headers: dict[str, str]  # as received (original case; the last of repeated headers wins)
    headers_ci: CIMultiDictProxy[str]  # the same, case-insensitive and with repeats
    ended: float | None = None  # handler finished, or was cancelled
    disconnected: bool = False  # the peer went away while we were answering
    body: bytes = b""
    json: object | None = None
    fault: str = ""  # name of the fault applied ("ok", "status_429", "reset", "down", ...)
    status: int | None = None  # status sent, None when no response head went out
    aborted: bool = False  # we cut the connection on purpose (Reset, cut_after, down)

    @property
    def request_id(self) -> str | None:
        return self.headers_ci.get("X-Request-ID")

    @property
    def duration(self) -> float | None:
        return None if self.ended is None else self.ended - self.started


class FakeProvider:
    """An OpenAI-compatible chat-completions provider on loopback with injectable faults.

    `script(*faults)` queues faults for the next attempts in order; once the
    queue is empty `default` applies (`Ok()` at first). `down = True` resets
    every connection until set back. With `api_key` set, requests without
    `Authorization: Bearer <api_key>` get 401. Validation failures, auth
    failures and `down` do not consume the script.
    """

    def __init__(self, name: str = "fake", *, models: Sequence[str] = ("fake-model",),
                 api_key: str | None = None, prefix: str = "/v1", strict: bool = True,
                 client_max_size: int = 64 * 1024 * 1024, max_hits: int | None = None) -> None:
        self.name = name
        self.models = tuple(models)
        self.api_key = api_key
        self.prefix = prefix.rstrip("/")
        self.strict = strict
        self.default: Fault = Ok()
        self.down = False
        self.hits: list[Hit] = []
        # A long-running mock (`router mock`, benchmarks) keeps only recent hits.
        self._max_hits = max_hits
        self.total_hits = 0
        self.base_url: str | None = None
        # Chat requests with base64 images exceed aiohttp's 1 MiB default.
        self._client_max_size = client_max_size
        self._script: deque[Fault] = deque()
        self._runner: web.AppRunner | None = None
        self._tasks: dict[Hit, asyncio.Task[Any]] = {}
        self._changed = asyncio.Event()
        self._stopping = False
        self._serial = 0

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self, host: str = "127.0.0.1", port: int = 0, *, tls: ssl.SSLContext | None = None) -> str:
        """Listen (port 0 = a free port) and return the base URL, e.g. http://127.0.0.1:PORT/v1
        (https:// with a server-side `tls` context)."""
        if self._runner is not None:
            raise RuntimeError(f"fake provider {self.name!r} is already running")
        app = web.Application(client_max_size=self._client_max_size)
        app.router.add_post(f"{self.prefix}/chat/completions", self._chat)
        app.router.add_get(f"{self.prefix}/models", self._models)
        # handler_cancellation: a client disconnect cancels the handler, which is how
        # Hang and stalled streams observe that the router gave up.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port, ssl_context=tls).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._stopping = False
        self._changed = asyncio.Event()  # fresh per start: a provider may be restarted on another loop
        bound_host, bound_port = runner.addresses[0][:2]
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        self.base_url = f"{'https' if tls else 'http'}://{shown}:{bound_port}{self.prefix}"
        return self.base_url

    async def stop(self) -> None:
        """Stop listening; in-flight handlers (hangs, stalls) are cancelled, not waited for."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        self._stopping = True
        pending = [task for task in self._tasks.values() if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    # -- behaviour ---------------------------------------------------------------------------

    def script(self, *faults: Fault) -> Self:
        """Queue faults for the next attempts, in order (appends to what is already queued)."""
        self._script.extend(faults)
        return self

    def set_default(self, fault: Fault) -> Self:
        self.default = fault
        return self

    @property
    def pending(self) -> tuple[Fault, ...]:
        """Scripted faults not used yet."""
        return tuple(self._script)

    def clear(self) -> None:
        """Forget hits and queued faults (the default and `down` stay)."""
        self.hits.clear()
        self._script.clear()

    # -- observation -------------------------------------------------------------------------

    @property
    def count(self) -> int:
        return len(self.hits)

    def times(self) -> list[float]:
        """Start time (monotonic) of each attempt, in arrival order."""
        return [hit.started for hit in self.hits]

    async def wait_until(self, predicate: Callable[[], bool], within_s: float = 1.0) -> None:
        """Wait until `predicate()` holds (re-checked whenever a hit starts or ends).

        Raises TimeoutError after `within_s`, so a broken test fails instead of hanging.
        """
        async with asyncio.timeout(within_s):
            while True:
                changed = self._changed  # taken before the check so no change is missed
                if predicate():
                    return
                await changed.wait()

    async def wait_for_hits(self, n: int, within_s: float = 1.0) -> list[Hit]:
        await self.wait_until(lambda: len(self.hits) >= n, within_s)
        return self.hits[:n]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def __repr__(self) -> str:
        return f"FakeProvider({self.name!r}, base_url={self.base_url!r}, hits={len(self.hits)})"

    # -- HTTP handlers -----------------------------------------------------------------------

    async def _models(self, request: web.Request) -> web.Response:
        data = [{"id": model, "object": "model", "created": 0, "owned_by": self.name}
                for model in self.models]
        return _json_response(200, {"object": "list", "data": data})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        hit = Hit(started=time.monotonic(), headers=dict(request.headers), headers_ci=request.headers)
        self.hits.append(hit)
        self.total_hits += 1
        if self._max_hits is not None and len(self.hits) > 2 * self._max_hits:
            del self.hits[:-self._max_hits]
        task = asyncio.current_task()
        if task is not None:
            self._tasks[hit] = task
        self._notify()
        try:
            hit.body = await request.read()
            view, problem = self._parse(hit)
            fault = self._choose(hit, view, problem)
            hit.fault = fault.name
            return await self._serve(request, hit, fault, view)
        except asyncio.CancelledError:
            # aiohttp cancels the handler when the peer closes (handler_cancellation=True);
            # our own aborts and shutdown also end up here but are not the peer's doing.
            hit.disconnected = not (hit.aborted or self._stopping)
            raise
        except ConnectionError:
            # A write hit a connection the peer already closed. Ending as cancelled keeps
            # aiohttp from logging it as a handler crash and trying to send a 500.
            hit.disconnected = True
            raise asyncio.CancelledError from None
        finally:
            hit.ended = time.monotonic()
            self._tasks.pop(hit, None)
            self._notify()

    def _parse(self, hit: Hit) -> tuple[RequestView, str | None]:
        try:
            payload = json.loads(hit.body)
        except ValueError:
            return RequestView({}), "We could not parse the JSON body of your request."
        hit.json = payload
        if not isinstance(payload, dict):
            return RequestView({}), "The request body must be a JSON object."
        view = RequestView(payload)
        if self.strict:
            if not isinstance(payload.get("model"), str) or not payload["model"]:
                return view, "you must provide a model parameter"
            if not isinstance(payload.get("messages"), list) or not payload["messages"]:
                return view, "'messages' is a required property"
        return view, None

    def _choose(self, hit: Hit, view: RequestView, problem: str | None) -> Concrete:
        if self.down:
            return Reset(label="down")
        if self.api_key is not None and not self._authorized(hit):
            return Status(401, "invalid_api_key", message="Incorrect API key provided.",
                          label="unauthorized")
        if problem is not None:
            return Status(400, None, message=problem, label="invalid_request")
        fault = self._script.popleft() if self._script else self.default
        return resolve(fault, view)

    def _authorized(self, hit: Hit) -> bool:
        scheme, _, token = hit.headers_ci.get("Authorization", "").partition(" ")
        expected = (self.api_key or "").encode()
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), expected)

    async def _serve(self, request: web.Request, hit: Hit, fault: Concrete,
                     view: RequestView) -> web.StreamResponse:
        match fault:
            case Ok():
                if fault.delay_s > 0:
                    await asyncio.sleep(fault.delay_s)
                if view.stream:
                    as_stream = Stream(content=fault.content, chunks=fault.chunks, extra=fault.extra,
                                       model=fault.model, label=fault.label, interval_s=fault.interval_s)
                    return await self._stream(request, hit, as_stream, view)
                hit.status = 200
                return _json_response(200, self._completion(fault, view), fault.headers)
            case Status():
                hit.status = fault.status
                return _status_response(fault)
            case Reset():
                await self._abort(request, hit, rst=fault.rst)
            case Hang():
                await _wait_forever()
            case SlowFirstByte():
                await asyncio.sleep(fault.delay_s)
                return await self._serve(request, hit, resolve(fault.then, view), view)
            case Stream():
                return await self._stream(request, hit, fault, view)
        raise AssertionError(f"unhandled fault {fault!r}")

    async def _abort(self, request: web.Request, hit: Hit, *, rst: bool) -> NoReturn:
        hit.aborted = True
        transport = request.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if rst and sock is not None:
                # SO_LINGER with a zero timeout makes the close send RST instead of FIN, so the
                # client sees ECONNRESET like a crashed upstream or a load balancer reset.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        # aiohttp's connection_lost() now cancels this handler; waiting for that instead of
        # returning keeps aiohttp from writing a response (or a chunked-body end) afterwards.
        await _wait_forever()

    def _next_id(self) -> str:
        self._serial += 1
        return f"chatcmpl-{self.name}-{self._serial}"

    def _completion(self, fault: Ok, view: RequestView) -> dict[str, Any]:
        return completion_for(fault, view, completion_id=self._next_id(), provider=self.name)

    async def _stream(self, request: web.Request, hit: Hit, plan: Stream,
                      view: RequestView) -> web.StreamResponse:
        response = web.StreamResponse(
            status=200, headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        # A prepared StreamResponse flushes its head at once: headers arrive before the first
        # event, so first_delay_s is a slow first token, not a slow first byte.
        await response.prepare(request)
        hit.status = 200
        if plan.first_delay_s > 0:
            await asyncio.sleep(plan.first_delay_s)

        if plan.error_first:
            status = STATUS_FOR_CODE.get(plan.error_code, 500)
            await response.write(sse(error_body(status, code=plan.error_code)))
            await response.write(DONE_EVENT)
            await response.write_eof()
            return response

        script = stream_script(plan, view, completion_id=self._next_id(), provider=self.name)
        pieces = script.pieces
        await _write_all(response, script.head)
        stop_at = plan.cut_after if plan.cut_after is not None else plan.stall_after
        for index, piece in enumerate(pieces):
            if index == stop_at:
                break
            if index and plan.interval_s > 0:
                await asyncio.sleep(plan.interval_s)
            if plan.malformed_at == index + 1:
                await response.write(MALFORMED_EVENT)
            await response.write(piece)
        if stop_at is not None:  # also when stop_at >= len(pieces): no finish chunk then
            if plan.cut_after is not None:
                # FIN rather than RST: with RST the client kernel may drop the pieces already
                # sent, and the test could not tell "cut after N" from "cut at 0".
                await self._abort(request, hit, rst=False)
            await _wait_forever()
        if plan.malformed_at is not None and plan.malformed_at > len(pieces):
            await response.write(MALFORMED_EVENT)
        if plan.send_finish_reason:
            await response.write(script.finish)
        if plan.usage or view.include_usage:
            await response.write(script.usage)
        if plan.send_done:
            await response.write(DONE_EVENT)
        await response.write_eof()
        return response


def _json_response(status: int, body: object, headers: Mapping[str, str] | None = None) -> web.Response:
    all_headers = CIMultiDict({"Content-Type": _JSON})
    all_headers.update(headers or {})  # case-insensitive: a fault may replace Content-Type
    raw = body if isinstance(body, bytes) else dumps(body)
    return web.Response(status=status, body=raw, headers=all_headers)


def _status_response(fault: Status) -> web.Response:
    if fault.body is not None:
        raw = fault.body.encode() if isinstance(fault.body, str) else fault.body
        return _json_response(fault.status, raw, fault.headers)
    body = error_body(fault.status, message=fault.message, code=fault.error_code,
                      error_type=fault.error_type, param=fault.param)
    return _json_response(fault.status, body, fault.headers)


async def _write_all(response: web.StreamResponse, events: Iterable[bytes]) -> None:
    # One write per event: each is handed to the transport (and drained) before the next,
    # so the client sees events as separate arrivals, like a real token stream.
    for item in events:
        await response.write(item)


async def _wait_forever() -> NoReturn:
    # Ends only by cancellation: the client closing, our own abort, or stop().
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")
