"""Every use of aiohttp's private or undocumented surface, in one module.

The daemon leans on aiohttp in four places where its public API has no way to say what
we need. Each is pinned by tests/server/test_aiohttp_internals.py against the aiohttp range
pyproject.toml allows, so an upgrade that changes one fails there, by name, not in a
behaviour test far away.

- `SseResponse`: an event stream whose head is sent with its first event (one send instead
  of two, as `web.Response` does) through `StreamResponse._send_headers_immediately`.
- `write_interim`: `100 Continue` written through `request.writer`, not counted in the
  answer's size.
- `ProtocolSite`: a `web.BaseSite` whose listening socket starts connections on a protocol
  of our own (the fast front), registered with the runner like aiohttp's own sites, so
  `runner.cleanup()` stops it; it sets `BaseSite._server` and reads `_runner` and `_backlog`.
- `close_idle_connections`: `web.Server.pre_shutdown()`, which closes idle keep-alive
  connections at the start of a drain rather than after it.
- `watched_handler_factory`: aiohttp's own protocol for the connections the fast front hands
  over, with what aiohttp lacks: a request head must be complete within `head_timeout_s` (aiohttp
  waits forever for a head that trickles in), and the fast front hears when the connection ends
  (for `server.max_connections`). It subclasses `web_protocol.RequestHandler`, reads its
  `_request_count` (requests parsed), wraps its `_handle_request` (one call per request, to count
  the requests answered) and builds it as `web.Server.__call__` does, from `Server._loop` and
  `Server._kwargs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import StreamReader, web, web_protocol

from router.server.wire import LINGER_BYTES, LINGER_S, refusal

SUPPORTED = ((3, 13), (4, 0))  # [low, high): pyproject.toml's aiohttp range


class SseResponse(web.StreamResponse):
    # The first event is written right after prepare(): let aiohttp send the headers with it.
    _send_headers_immediately = False


async def write_interim(request: web.BaseRequest, data: bytes) -> None:
    """Write an interim answer (`100 Continue`) before the real one, outside the answer's size."""
    await request.writer.write(data)
    request.writer.output_size = 0


class ProtocolSite(web.BaseSite):
    """A TCP site whose connections start on `protocol()`; subclasses implement `protocol` and
    may use `app` and `fallback` (aiohttp's own protocol factory, to hand a connection over)."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, *, reuse_port: bool | None = None) -> None:
        super().__init__(runner)
        self._host, self._port, self._reuse_port = host, port, reuse_port

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    @property
    def app(self) -> web.Application:
        runner = self._runner
        assert isinstance(runner, web.AppRunner)
        return runner.app

    @property
    def fallback(self) -> Callable[[], asyncio.Protocol]:
        server = self._runner.server
        assert server is not None, "the runner is not set up"
        return server  # type: ignore[return-value]  # web.Server builds a RequestHandler per call

    def protocol(self) -> asyncio.Protocol:
        raise NotImplementedError

    async def start(self) -> None:
        await super().start()  # registers the site with the runner
        self._server = await asyncio.get_running_loop().create_server(
            self.protocol, self._host, self._port, backlog=self._backlog, reuse_port=self._reuse_port)


def close_idle_connections(runner: web.AppRunner) -> None:
    """Close aiohttp's idle keep-alive connections now (busy ones finish their request first)."""
    if runner.server is not None:
        runner.server.pre_shutdown()


class _WatchedHandler(web_protocol.RequestHandler):
    __slots__ = ("_armed_at", "_awaiting_head", "_head_spent_s", "_head_timeout_s", "_head_timer", "_last_body",
                 "_lingering", "_on_lost", "_unanswered")

    def __init__(self, server: web.Server, head_timeout_s: float, on_lost: Callable[[], None], head_spent_s: float,
                 **kwargs: object) -> None:
        super().__init__(server, **kwargs)  # type: ignore[arg-type]
        self._head_timeout_s = head_timeout_s
        self._head_spent_s = head_spent_s  # how long the head handed over has been arriving already
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_at = 0  # requests parsed when the timer started: one more, and the head came in time
        self._unanswered = 0  # requests parsed whose handling has not ended
        self._awaiting_head = True  # every request is answered, on a connection that stays open
        self._last_body: StreamReader | None = None  # the body of the last request answered
        self._lingering = -1  # >= 0 once the 408 is written: the bytes dropped since
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        # The head the fast front handed over must be complete within the limit too, counted from its start.
        self._arm(self._head_timeout_s - self._head_spent_s)

    def data_received(self, data: bytes) -> None:
        if self._lingering >= 0:
            self._lingering += len(data)
            if self._lingering > LINGER_BYTES:
                self.force_close()
            return
        parsed = self._request_count
        # Bytes that can only begin the next head: every request is answered, the answer kept the
        # connection open, and its body was read whole (else these may be the rest of it, which aiohttp
        # drains). Not "aiohttp waits for the next request": a byte sent right after an answer can arrive
        # before aiohttp starts waiting, and would then be timed by keepalive_s alone.
        head_bytes = (data and self._awaiting_head and self._unanswered == 0
                      and (self._last_body is None or self._last_body.is_eof()))
        super().data_received(data)
        self._unanswered += self._request_count - parsed
        if self._request_count > parsed:
            self._disarm()  # a whole head arrived
        elif head_bytes and self._head_timer is None:
            self._arm()

    async def _handle_request(self, request: web.BaseRequest, *args: Any) -> Any:
        self._awaiting_head = False
        answer: Any = None
        try:
            answer = await super()._handle_request(request, *args)
            return answer
        finally:
            self._unanswered -= 1
            self._last_body = request.content
            if answer is not None:
                response, reset = answer
                self._awaiting_head = bool(response.keep_alive) and not reset

    def _arm(self, within_s: float | None = None) -> None:
        self._disarm()
        self._armed_at = self._request_count
        delay = self._head_timeout_s if within_s is None else max(0.0, within_s)
        self._head_timer = self._loop.call_later(delay, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if self._request_count != self._armed_at or transport is None or transport.is_closing():
            return
        # No request is being answered, so the 408 is the only answer. Then a lingering close, as the fast
        # front's: closing with bytes unread would reset the connection, and the client could lose the 408.
        transport.write(refusal(408, "request head not received in time", code="head_timeout"))
        self._lingering = 0
        if transport.can_write_eof():
            transport.write_eof()
        transport.resume_reading()  # (aiohttp may have paused it)
        self._head_timer = self._loop.call_later(LINGER_S, self.force_close)

    def eof_received(self) -> None:
        if self._lingering >= 0:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._on_lost()


def watched_handler_factory(runner: web.AppRunner, head_timeout_s: float,
                            on_lost: Callable[[], None]) -> Callable[[float], asyncio.Protocol]:
    """aiohttp's protocol for one connection, with a head timeout and an end-of-connection callback.
    The factory takes how long the head it is handed has been arriving already (0 for none)."""
    server = runner.server
    assert server is not None, "the runner is not set up"

    def make(head_spent_s: float = 0.0) -> asyncio.Protocol:
        return _WatchedHandler(server, head_timeout_s, on_lost, head_spent_s, loop=server._loop, **server._kwargs)

    return make
