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
  `_request_count` (requests parsed) and `_waiter` (pending while it waits for the next request),
  and builds it as `web.Server.__call__` does, from `Server._loop` and `Server._kwargs`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web, web_protocol

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
    __slots__ = ("_armed_at", "_head_timeout_s", "_head_timer", "_on_lost")

    def __init__(self, server: web.Server, head_timeout_s: float, on_lost: Callable[[], None],
                 **kwargs: object) -> None:
        super().__init__(server, **kwargs)  # type: ignore[arg-type]
        self._head_timeout_s = head_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None
        self._armed_at = 0  # requests parsed when the timer started: one more, and the head came in time
        self._on_lost = on_lost

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # the head the fast front handed over must be complete within the limit too

    def data_received(self, data: bytes) -> None:
        parsed = self._request_count
        super().data_received(data)
        if self._request_count > parsed:
            self._disarm()  # a whole head arrived
        elif self._head_timer is None and self._waiter is not None and not self._waiter.done():
            self._arm()  # the first bytes of the next request's head

    def _arm(self) -> None:
        self._disarm()
        self._armed_at = self._request_count
        self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._request_count == self._armed_at:
            self.force_close()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        super().connection_lost(exc)
        self._on_lost()


def watched_handler_factory(runner: web.AppRunner, head_timeout_s: float,
                            on_lost: Callable[[], None]) -> Callable[[], asyncio.Protocol]:
    """aiohttp's protocol for one connection, with a head timeout and an end-of-connection callback."""
    server = runner.server
    assert server is not None, "the runner is not set up"

    def make() -> asyncio.Protocol:
        return _WatchedHandler(server, head_timeout_s, on_lost, loop=server._loop, **server._kwargs)

    return make
