"""The fast front: the daemon's listening socket, serving the common chat request itself.

Why: aiohttp's server machinery (request objects, the response writer, the per-connection
task) cost ~0.15 ms of the streaming time to first byte and a share of the CPU per request
(bench/README.md). A well-formed `POST /v1/chat/completions` whose whole Content-Length body
has arrived is answered here, over the same chat logic (chat.serve_chat). Every other complete
request (other paths, chunked or compressed bodies, `Expect`, HTTP/1.0), or a body still
incomplete after `HAND_OFF_S`, hands the connection, with every byte read so far, to aiohttp's
own protocol, which then keeps it. See wire.parse_head for what is accepted.

Every peer is treated as hostile, with the same limits on both paths:
- a request head must be complete within `server.head_timeout_s` (408, then close); aiohttp's
  protocol gets the same head timeout (aiohttp_internals.watched_handler_factory);
- a declared body over `server.max_body_bytes` is refused at once (413), not read;
- while an answer waits unsent because the client does not read, no further pipelined request
  is served, and reading pauses once 64 KiB of them are buffered: memory stays bounded;
- a keep-alive connection idle for `server.keepalive_s` is closed;
- at most `server.max_connections` connections are open; one more gets a 503 and is closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import cast

from aiohttp import web

from router.policy.model import ServerPolicy
from router.server import wire
from router.server.aiohttp_internals import ProtocolSite, watched_handler_factory
from router.server.chat import serve_chat
from router.server.context import CONTEXT, ServerContext
from router.server.fast_exchange import FastExchange

log = logging.getLogger("router.server")

# How long a body may take to follow its head before aiohttp's server takes the connection over (and
# applies the handler's body timeout). Clients send a small request in one or two writes.
HAND_OFF_S = 1.0
_PIPELINE_LIMIT = 1 << 16  # bytes read ahead while a request is served, before reading pauses

_LINE = wire.REQUEST_LINE + b"\r\n"
_HEAD_END = b"\r\n\r\n"

Tap = Callable[[int, Mapping[str, str], bytes | None], None]


class _Front:
    """The connections of one listening socket: limits, the sweep of idle and slow ones, the drain."""

    def __init__(self, context: ServerContext, fallback: Callable[[float], asyncio.Protocol], settings: ServerPolicy,
                 tap: Tap | None) -> None:
        self.context, self.fallback, self.settings, self.tap = context, fallback, settings, tap
        self.max_body = settings.max_body_bytes
        self.connections: set[_Connection] = set()  # those the fast front serves (not handed over)
        self.open = 0  # every accepted connection, handed over or not, until it ends
        self.closing = False
        self._sweep_s = min(1.0, settings.head_timeout_s / 4, settings.keepalive_s / 4)
        self._sweeper: asyncio.TimerHandle | None = None

    def protocol(self) -> asyncio.Protocol:
        if self._sweeper is None and not self.closing:
            self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)
        if self.open >= self.settings.max_connections:
            return _Refused(wire.refusal(503, "too many connections; try again shortly", code="too_many_connections",
                                         retry_after=1))
        self.open += 1
        return _Connection(self)

    def connection_ended(self) -> None:
        self.open -= 1

    def _sweep(self) -> None:
        now = time.monotonic()
        idle_before = now - self.settings.keepalive_s
        head_before = now - self.settings.head_timeout_s
        for connection in list(self.connections):
            if connection.idle_since is not None and connection.idle_since < idle_before:
                connection.close()
            elif connection.head_since is not None and connection.head_since < head_before:
                connection.refuse(408, "request head not received in time", "head_timeout")
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_s, self._sweep)

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


class _Refused(asyncio.Protocol):
    """A connection over `server.max_connections`: the refusal, then the close."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not asyncio's subclasses)
        transport.write(self._answer)
        transport.close()


class _Connection(asyncio.Protocol):
    __slots__ = ("_buffer", "_drain_waiter", "_lingering", "_paused", "_progress", "_scanned", "_timer", "_transport",
                 "front", "head_since", "idle_since", "task")

    def __init__(self, front: _Front) -> None:
        self.front = front
        self._transport: asyncio.Transport | None = None
        self._buffer: bytes | bytearray = b""
        self._scanned = 0  # how far the buffer was searched for the end of a head
        self._progress: wire.HeadProgress | None = None  # the checks of a head that came in pieces
        self._timer: asyncio.TimerHandle | None = None
        self._paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lingering = -1  # >= 0 once refused: the bytes dropped since
        self.task: asyncio.Task[None] | None = None
        now = time.monotonic()
        self.idle_since: float | None = None
        self.head_since: float | None = now  # the first head must come within head_timeout_s of connecting

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # (uvloop's transports are not asyncio's subclasses)
        self.front.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > wire.LINGER_BYTES:
                self.close()
            return
        buffer = self._buffer
        if not buffer:
            self._buffer = data
        else:
            if isinstance(buffer, bytes):  # a second piece: from now on grow in place, not by copying
                buffer = self._buffer = bytearray(buffer)
            buffer += data
        if self.task is not None:
            if len(self._buffer) > _PIPELINE_LIMIT and self._transport is not None:
                self._transport.pause_reading()  # resumed by _answer once the answer is out and the buffer shrank
            return
        if self.head_since is None:
            self.head_since = time.monotonic()
            self.idle_since = None
        self._next()

    def _next(self) -> None:
        """Serve the buffered request, wait for the rest of it, or hand the connection to aiohttp."""
        buffer = self._buffer
        if not buffer.startswith(_LINE[:len(buffer)]):
            # Another request (or none at all): aiohttp's, at once; its protocol has the same head
            # timeout (aiohttp_internals.watched_handler_factory) and its own limits.
            self._hand_off()
            return
        end = buffer.find(_HEAD_END, max(0, self._scanned - 3))
        if end < 0:
            self._scanned = len(buffer)
            if len(buffer) > wire.MAX_HEAD_BYTES:
                self._hand_off()  # a head this long is aiohttp's to judge
            elif len(buffer) > len(_LINE):
                if self._progress is None:
                    self._progress = wire.HeadProgress()
                if not self._progress.viable(buffer):
                    self._hand_off()  # it will not be ours: aiohttp answers now, as it would alone
            return  # the sweep refuses a head that takes longer than head_timeout_s
        self.head_since = None
        self._progress = None
        if end > wire.MAX_HEAD_BYTES:
            self._hand_off()
            return
        head = wire.parse_head(bytes(buffer[:end]))
        if head is None:
            self._hand_off()
            return
        if head.length > self.front.max_body:
            self._start(head, b"", end + 4, too_large=self.front.max_body)
            return
        total = end + 4 + head.length
        if len(buffer) < total:
            if self._timer is None:
                self._timer = asyncio.get_running_loop().call_later(HAND_OFF_S, self._hand_off)
            return
        self._start(head, bytes(buffer[end + 4:total]), total)

    def _start(self, head: wire.RequestHead, body: bytes, consumed: int, *, too_large: int | None = None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        buffer = self._buffer
        if len(buffer) == consumed:
            self._buffer = b""
        elif isinstance(buffer, bytearray):
            del buffer[:consumed]
        else:
            self._buffer = buffer[consumed:]
        self._scanned = 0
        self.idle_since = None
        self.task = asyncio.get_running_loop().create_task(self._serve(head, body, too_large))

    def _hand_off(self) -> None:
        """aiohttp's protocol takes the connection over, starting with every byte not yet served."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        front = self.front
        front.connections.discard(self)
        self._transport = None
        # It tells the front when the connection ends, and a head already begun keeps its start time.
        protocol = front.fallback(0.0 if self.head_since is None else time.monotonic() - self.head_since)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        data, self._buffer = bytes(self._buffer), b""
        transport.resume_reading()
        if data:
            protocol.data_received(data)

    async def _serve(self, head: wire.RequestHead, body: bytes, too_large: int | None) -> None:
        transport = self._transport
        assert transport is not None
        try:
            await self._answer(transport, head, body, too_large)
        except Exception as exc:  # a bug here must not leave the task's error unretrieved, nor the client hanging
            log.error("fast front: internal error: %s: %s", type(exc).__name__, exc)
            transport.abort()

    async def _answer(self, transport: asyncio.Transport, head: wire.RequestHead, body: bytes,
                      too_large: int | None) -> None:
        exchange = FastExchange(self, transport, head, body, too_large=too_large)
        await serve_chat(self.front.context, exchange)
        if exchange.close or self.front.closing or transport.is_closing():
            self.task = None
            if too_large is not None and not transport.is_closing():
                self._linger(transport)  # the body it declared is still coming
            else:
                transport.close()
            return
        # A client that pipelines and does not read its answers gets no more of them served until it
        # reads: the answers already written are what this connection may hold in memory.
        if self._paused:
            try:
                await self.drain()
            except ConnectionResetError:
                return  # it went away instead
        self.task = None
        self.idle_since = time.monotonic()
        if self._buffer:
            self.head_since = self.idle_since
            self.idle_since = None
            self._next()
        # Reading stays paused while the next pipelined request is served with over 64 KiB read ahead:
        # resuming after every answer let a flood of small requests grow the buffer a read at a time.
        if self._transport is transport and (self.task is None or len(self._buffer) <= _PIPELINE_LIMIT):
            transport.resume_reading()

    def refuse(self, status: int, message: str, code: str) -> None:
        """A connection-level refusal (no request was read whole): the answer, then a lingering close."""
        transport = self._transport
        if transport is None or transport.is_closing() or self.task is not None:
            return
        transport.write(wire.refusal(status, message, code=code))
        self.front.connections.discard(self)
        self._linger(transport)

    def _linger(self, transport: asyncio.Transport) -> None:
        """Close once the client stopped sending (or after wire.LINGER_S): closing with unread bytes would
        reset the connection, and the client could lose the answer just written."""
        self._lingering = 0
        self._buffer = b""
        self.head_since = self.idle_since = None
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(wire.LINGER_S, self.close)

    def eof_received(self) -> bool | None:
        if self._lingering >= 0:
            self.close()
        return None

    @property
    def paused(self) -> bool:
        """Writing is paused: the client has not read what was written (drain() waits for it)."""
        return self._paused

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
        self.front.connection_ended()
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.task is not None and not self.task.done():
            self.task.cancel()  # the client went away: the upstream request and its reservations go too
        waiter, self._drain_waiter = self._drain_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("the client closed the connection"))


def aiohttp_limits(settings: ServerPolicy) -> dict[str, float]:
    """`web.AppRunner` options that give the connections aiohttp serves the fast front's limits. (Its
    lingering time stays aiohttp's 10 s: a client refused, say with a 401, before its upload ended
    still reads the refusal if the upload ends within it.)"""
    return {"keepalive_timeout": settings.keepalive_s}


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
        settings = context.router.policy.server
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        front: _Front | None = None

        def ended() -> None:
            assert front is not None
            front.connection_ended()

        fallback = watched_handler_factory(runner, settings.head_timeout_s, ended)
        front = self._front = _Front(context, fallback, settings, self._tap)
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
