"""The fast front: the daemon's listening socket, serving the common chat request itself.

Why: aiohttp's server machinery (request objects, the response writer, the per-connection
task) cost ~0.15 ms of the streaming time to first byte and a share of the CPU per request
(bench/README.md). A well-formed `POST /v1/chat/completions` whose whole Content-Length body
has arrived is answered here, over the same chat logic (chat.serve_chat). Everything else
(other paths, chunked or compressed bodies, `Expect`, HTTP/1.0, a head or body still
incomplete after `HAND_OFF_S`) hands the connection, with every byte read so far, to aiohttp's
own protocol, which then keeps it. See wire.parse_head for what is accepted.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping

from aiohttp import web

from router.server import wire
from router.server.aiohttp_internals import ProtocolSite
from router.server.answer import Answer
from router.server.chat import events, serve_chat
from router.server.context import CONTEXT, ServerContext

log = logging.getLogger("router.server")

# How long a partial request may take before aiohttp's server takes the connection over (and applies
# its own limits, and the handler's body timeout). Clients send a small request in one or two writes.
HAND_OFF_S = 1.0
IDLE_TIMEOUT_S = 75.0  # a keep-alive connection with no request for this long is closed (aiohttp's default)
_SWEEP_S = 5.0
_PIPELINE_LIMIT = 1 << 16  # bytes read ahead while a request is served, before reading pauses

_LINE = wire.REQUEST_LINE + b"\r\n"

Tap = Callable[[int, Mapping[str, str], bytes | None], None]


class _Front:
    """The connections of one listening socket, for the drain and the idle sweep."""

    def __init__(self, context: ServerContext, fallback: Callable[[], asyncio.Protocol], max_body: int,
                 tap: Tap | None) -> None:
        self.context, self.fallback, self.max_body, self.tap = context, fallback, max_body, tap
        self.connections: set[_Connection] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> _Connection:
        if self._sweeper is None and not self.closing:
            self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)
        return _Connection(self)

    def _sweep(self) -> None:
        deadline = time.monotonic() - IDLE_TIMEOUT_S
        for connection in list(self.connections):
            if connection.idle_since is not None and connection.idle_since < deadline:
                connection.close()
        self._sweeper = asyncio.get_running_loop().call_later(_SWEEP_S, self._sweep)

    def close_idle(self) -> None:
        """Idle connections close now, busy ones after their answer."""
        self.closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for connection in list(self.connections):
            if connection.idle_since is not None:
                connection.close()

    async def shutdown(self, grace_s: float) -> None:
        """Cancel what outlived the drain, give it `grace_s` to clean up, and close every connection."""
        self.close_idle()
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
        for connection in list(self.connections):
            connection.close()


class _Connection(asyncio.Protocol):
    __slots__ = ("_buffer", "_drain_waiter", "_paused", "_timer", "_transport", "front", "idle_since", "task")

    def __init__(self, front: _Front) -> None:
        self.front = front
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.idle_since: float | None = time.monotonic()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        self._buffer = self._buffer + data if self._buffer else data
        if self.task is None:
            self._next()
        elif len(self._buffer) > _PIPELINE_LIMIT and self._transport is not None:
            self._transport.pause_reading()  # resumed by _next once the answer is out

    def _next(self) -> None:
        """Serve the buffered request, wait for the rest of it, or hand the connection to aiohttp."""
        buffer = self._buffer
        if not buffer.startswith(_LINE[:len(buffer)]):  # another request: aiohttp's, without waiting
            self._hand_off()
            return
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(buffer) > wire.MAX_HEAD_BYTES:
                self._hand_off()
            elif buffer:
                self._wait()
            return
        head = wire.parse_head(buffer[:end], self.front.max_body) if end <= wire.MAX_HEAD_BYTES else None
        if head is None:
            self._hand_off()
            return
        total = end + 4 + head.length
        if len(buffer) < total:
            self._wait()
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._buffer = buffer[total:]
        self.idle_since = None
        self.task = asyncio.get_running_loop().create_task(self._serve(head, buffer[end + 4:total]))

    def _wait(self) -> None:
        self.idle_since = None
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(HAND_OFF_S, self._hand_off)

    def _hand_off(self) -> None:
        """aiohttp's protocol takes the connection over, starting with every byte not yet served."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.front.connections.discard(self)
        self._transport = None
        protocol = self.front.fallback()
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = self._buffer, b""
        transport.resume_reading()
        if data:
            protocol.data_received(data)

    async def _serve(self, head: wire.RequestHead, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        try:
            await self._answer(transport, head, body)
        except Exception as exc:  # a bug here must not leave the task's error unretrieved, nor the client hanging
            log.error("fast front: internal error: %s: %s", type(exc).__name__, exc)
            transport.abort()

    async def _answer(self, transport: asyncio.Transport, head: wire.RequestHead, body: bytes) -> None:
        exchange = _Exchange(self, transport, head, body)
        await serve_chat(self.front.context, exchange)
        self.task = None
        if exchange.close or self.front.closing or transport.is_closing():
            transport.close()
            return
        self.idle_since = time.monotonic()
        transport.resume_reading()
        if self._buffer:
            self._next()

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def drain(self) -> None:
        if self._paused:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.front.connections.discard(self)
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: the upstream request and its reservations go too
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))


class _Exchange:
    """chat.Exchange over a fast-front connection: renders the answer as HTTP/1.1 bytes."""

    __slots__ = ("_body", "_connection", "_head", "_transport", "close", "headers", "started")
    method = "POST"
    path = "/v1/chat/completions"

    def __init__(self, connection: _Connection, transport: asyncio.Transport, head: wire.RequestHead,
                 body: bytes) -> None:
        self._connection, self._transport, self.headers, self._body = connection, transport, head.headers, body
        self.close = head.close  # after this answer (the client asked, or the answer or a drain decides)
        self.started = False
        self._head = b""  # a stream's head, until it goes out with the first event

    async def read_body(self) -> bytes:
        return self._body

    async def send(self, answer: Answer) -> None:
        transport, tap = self._transport, self._connection.front.tap
        self.close = close = self.close or answer.close or self._connection.front.closing
        if answer.stream is None:
            transport.write(wire.answer_head(answer.status, answer.headers, length=len(answer.body), close=close)
                            + answer.body)
            self.started = True
            if tap is not None:
                tap(answer.status, answer.headers, answer.body)
            return
        # The head goes out with the first event: one write, as aiohttp does with SseResponse.
        self._head = wire.answer_head(answer.status, answer.headers, length=None, close=close)
        async for data in events(answer):
            await self.write_event(data)
        transport.write(self._pending_head() + wire.LAST_CHUNK)
        self.started = True
        if tap is not None:
            tap(answer.status, answer.headers, None)

    async def write_event(self, data: bytes) -> None:
        transport = self._transport
        if transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        transport.write(self._pending_head() + wire.chunk(data))
        self.started = True
        await self._connection.drain()

    def _pending_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def abort(self) -> None:
        self.close = True
        self._transport.abort()


class FrontSite(ProtocolSite):
    """A TCP site whose connections start on the fast front (see the module docstring).

    `tap` sees every answer the fast front sends (status, headers, body or None for a stream);
    the tests use it to check answers for leaks."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, reuse_port: bool | None = None,
                 tap: Tap | None = None) -> None:
        super().__init__(runner, host, port, reuse_port=reuse_port)
        self._tap = tap
        self._front: _Front | None = None

    async def start(self) -> None:
        context = self.app[CONTEXT]
        self._front = _Front(context, self.fallback, context.router.policy.server.max_body_bytes, self._tap)
        await super().start()

    def protocol(self) -> asyncio.Protocol:
        assert self._front is not None
        return self._front.protocol()

    async def stop(self) -> None:
        """Stop listening; idle fast-front connections close now, busy ones after their answer."""
        await super().stop()
        if self._front is not None:
            self._front.close_idle()

    async def shutdown(self, grace_s: float) -> None:
        """After the drain: cancel the fast front's requests that are left and close its connections."""
        if self._front is not None:
            await self._front.shutdown(grace_s)
