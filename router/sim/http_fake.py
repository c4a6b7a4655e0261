"""A fault profile's provider over real HTTP on loopback: the agreement test's other half.

Each attempt is decided by the same `ProviderModel.decide` as in `router simulate` (provider.py),
on real time, and carried out over a socket with the same bytes:

- `refused`: a listening server cannot refuse one connection, so the connection is reset (RST)
  as soon as the request arrived, before any byte of an answer. The router classifies a reset
  before the head as it does a refused connection (retry, a breaker failure), so the two runs
  take the same decisions; the only difference is that the fast client sends a request on a
  kept-alive connection once more on a fresh one when the first dies that way (counted by the
  provider twice, by the router once);
- `silent`: the request is read and never answered;
- everything else after `decision.delay_s`: an error status, a JSON body, or a stream's first
  read then the rest STREAM_GAP_S later (a stalled one: never).

`GET /models` answers 200 unless an outage is in progress (for `health_probe`).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
from typing import NoReturn

from aiohttp import web

from router.sim.provider import REFUSED, SILENT, STATUS, STREAM_GAP_S, ProviderModel

__all__ = ["HttpFakeProvider"]


class HttpFakeProvider:
    """`start()` listens on 127.0.0.1 (a free port) and returns the base URL; `origin` is the loop time
    of the profile's second 0 (set it to the offered load's origin before the first request)."""

    def __init__(self, model: ProviderModel, *, origin: float = 0.0) -> None:
        self.model = model
        self.origin = origin
        self.requests = 0  # chat requests received (a resend after a reset counts again)
        self._runner: web.AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        # A client that gives up (a first-byte timeout on a silent provider) cancels its handler.
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, host, port).start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        return f"http://{bound_host}:{bound_port}/v1"

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self.origin

    async def _models(self, request: web.Request) -> web.Response:
        status = 200 if self.model.healthy(self._now()) else 503
        return web.json_response({"object": "list", "data": []}, status=status)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        self.requests += 1
        stream = json.loads(body).get("stream") is True
        decision = self.model.decide(self._now(), stream)
        if decision.kind == REFUSED:
            await _reset(request)
        if decision.kind == SILENT:
            await _forever()
        if decision.delay_s > 0:
            await asyncio.sleep(decision.delay_s)
        answers = self.model.answers
        if decision.kind == STATUS:
            headers = {"Retry-After": str(decision.retry_after)} if decision.retry_after is not None else None
            return web.Response(status=decision.status, body=answers.error(decision.status),
                                content_type="application/json", headers=headers)
        if not stream:
            return web.Response(body=answers.json, content_type="application/json")
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        if self.model.instant:
            await response.write(answers.stream_whole)
        else:
            await response.write(answers.stream_reads[0])
            if decision.stalled:
                await _forever()
            await asyncio.sleep(STREAM_GAP_S)
            await response.write(answers.stream_reads[1])
        await response.write_eof()
        return response


async def _reset(request: web.Request) -> NoReturn:
    transport = request.transport
    if transport is not None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # SO_LINGER 0: the close sends RST, as a refusing or crashed peer would
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
    await _forever()  # aiohttp cancels the handler once the connection is gone


async def _forever() -> NoReturn:
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")
