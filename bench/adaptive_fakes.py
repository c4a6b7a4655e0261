"""The fake providers of bench/adaptive.py: OpenAI-compatible chat completions whose behaviour changes over time.

A `FakeProvider` is an aiohttp app on 127.0.0.1 that runs in the benchmark's own event loop. It speaks
the chat-completions wire format (a JSON `chat.completion`, or a `text/event-stream` of
`chat.completion.chunk` events ending with `data: [DONE]`) and answers `GET /v1/models`. What it does
changes over time: a list of phases `(start_s, Behaviour)` counted from the scenario's start, e.g.
"50 ms until second 10, then 1 s". A phase with `up=False` closes the listener (connection refused,
kept-alive connections closed too) and the next `up` phase listens again on the same port. An optional
`RateWindow` gives it a fixed-window request quota (429 + `Retry-After` beyond it), announced or not in
OpenAI's `x-ratelimit-*-requests` headers. Every request it receives is recorded (`Received`).
"""


from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web

_USED_PORTS: set[int] = set()
_IDS = itertools.count(1)


def free_port() -> int:
    """A free TCP port on 127.0.0.1, never the same twice in one run."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in _USED_PORTS:
            _USED_PORTS.add(port)
            return port


def go_duration(seconds: float) -> str:
    """A Go `time.Duration` string the way OpenAI sends `x-ratelimit-reset-*`: `20ms`, `59.5s`, `6m0s`."""
    seconds = round(max(seconds, 0.0), 3)
    if seconds < 1:
        return f"{max(1, round(seconds * 1000))}ms"
    if seconds < 60:
        return f"{seconds:g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass(frozen=True)
class Behaviour:
    """What a fake does from its phase's start on."""

    latency_s: float = 0.05  # to the JSON answer, or to a stream's first event (its headers go at once)
    status: int = 200  # anything else: answer that status (an OpenAI error body), to every path
    up: bool = True  # False: the listener is closed (connection refused)
    # Share of requests that take slow_latency_s instead: exactly one in each block of round(1 / slow_fraction)
    # consecutive requests, its place in the block drawn with the fake's seeded random source.
    slow_fraction: float = 0.0
    slow_latency_s: float = 0.0


@dataclass(frozen=True)
class RateWindow:
    """A fixed-window request quota, windows counted from the scenario's start."""

    limit: int
    window_s: float
    announce: bool = False  # x-ratelimit-{limit,remaining,reset}-requests on every answer, 429s included
    retry_after_s: int | None = None  # the 429's Retry-After; None: the seconds until the window resets


@dataclass
class Received:
    t: float  # seconds since the scenario's start
    path: str  # "chat", "models" or the raw path
    stream: bool
    status: int
    slow: bool = False


def completion(provider: str, model: str) -> dict[str, object]:
    return {"id": f"chatcmpl-{provider}-{next(_IDS)}", "object": "chat.completion", "created": int(time.time()),
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Hello from {provider}."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}}


def stream_events(provider: str, model: str, words: int = 3) -> list[bytes]:
    """A role chunk, `words` content chunks, the finish chunk and `[DONE]`, as SSE events."""
    ident, created = f"chatcmpl-{provider}-{next(_IDS)}", int(time.time())

    def chunk(delta: dict[str, str], finish: str | None = None) -> bytes:
        payload = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

    return [chunk({"role": "assistant", "content": ""}),
            *(chunk({"content": f"word{index} "}) for index in range(words)),
            chunk({}, "stop"), b"data: [DONE]\n\n"]


def error_response(status: int, message: str, code: str | None, headers: dict[str, str] | None = None
                   ) -> web.Response:
    kind = "requests" if status == 429 else "server_error"
    return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": code}},
                             status=status, headers=headers)


class FakeProvider:
    """One fake provider on its own port; see the module docstring."""

    EVENT_GAP_S = 0.01  # between a stream's events after the first

    def __init__(self, name: str, phases: Sequence[tuple[float, Behaviour]], *, limit: RateWindow | None = None,
                 seed: int = 1) -> None:
        self.name = name
        self.port = free_port()
        self.phases = sorted(phases, key=lambda phase: phase[0])
        self.limit = limit
        self.records: list[Received] = []
        self._rng = random.Random(seed)
        self._origin = time.monotonic()
        self._runner: web.AppRunner | None = None
        self._driver: asyncio.Task[None] | None = None
        self._window = (-1, 0)  # (window index, requests admitted in it)
        self._slow_block: list[bool] = []  # the draws left in the current block

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def now(self) -> float:
        return time.monotonic() - self._origin

    def behaviour(self) -> Behaviour:
        now, current = self.now(), self.phases[0][1]
        for start, behaviour in self.phases:
            if start <= now:
                current = behaviour
        return current

    def chat_records(self, status: int | None = None) -> list[Received]:
        return [r for r in self.records if r.path == "chat" and (status is None or r.status == status)]

    # -- life cycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        """Listen if the first phase is up (before the scenario starts, so the router can be started)."""
        if self.phases[0][1].up:
            await self._listen()

    def begin(self, origin: float) -> None:
        """Start the scenario's clock at `origin` (a `time.monotonic()` value); phases count from it."""
        self._origin = origin
        self._driver = asyncio.create_task(self._drive())

    async def stop(self) -> None:
        if self._driver is not None:
            self._driver.cancel()
            await asyncio.gather(self._driver, return_exceptions=True)
        await self._close()

    async def _drive(self) -> None:
        for start, behaviour in self.phases:
            delay = self._origin + start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            if behaviour.up and self._runner is None:
                await self._listen()
            elif not behaviour.up and self._runner is not None:
                await self._close()

    async def _listen(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/{tail:.*}", self._other)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True).start()
        self._runner = runner

    async def _close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()  # closes the listener and every connection, kept-alive ones included

    # -- handlers ------------------------------------------------------------------------------------
    def _admit(self, now: float) -> tuple[bool, dict[str, str]]:
        """Count one request against the window: admitted or not, and the headers to send."""
        limit = self.limit
        assert limit is not None
        index = math.floor(now / limit.window_s)
        window, used = self._window if self._window[0] == index else (index, 0)
        admitted = used < limit.limit
        self._window = (window, used + 1 if admitted else used)
        reset_s = (index + 1) * limit.window_s - now
        headers: dict[str, str] = {}
        if limit.announce:
            headers = {"x-ratelimit-limit-requests": str(limit.limit),
                       "x-ratelimit-remaining-requests": str(limit.limit - self._window[1]),
                       "x-ratelimit-reset-requests": go_duration(reset_s)}
        if not admitted:
            wait = limit.retry_after_s if limit.retry_after_s is not None else max(1, math.ceil(reset_s))
            headers["Retry-After"] = str(wait)
        return admitted, headers

    def _draw_slow(self, behaviour: Behaviour) -> bool:
        if behaviour.slow_fraction <= 0:
            return False
        if not self._slow_block:
            size = max(1, round(1 / behaviour.slow_fraction))
            slow_at = self._rng.randrange(size)
            self._slow_block = [index == slow_at for index in range(size)]
        return self._slow_block.pop(0)

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        stream, model = bool(body.get("stream")), str(body.get("model", "fake-model"))
        behaviour, now = self.behaviour(), self.now()
        if behaviour.status != 200:
            self.records.append(Received(now, "chat", stream, behaviour.status))
            return error_response(behaviour.status, f"{self.name} is failing", None)
        headers: dict[str, str] = {}
        if self.limit is not None:
            admitted, headers = self._admit(now)
            if not admitted:
                self.records.append(Received(now, "chat", stream, 429))
                return error_response(429, "Rate limit reached for requests", "rate_limit_exceeded", headers)
        slow = self._draw_slow(behaviour)
        self.records.append(Received(now, "chat", stream, 200, slow))
        delay = behaviour.slow_latency_s if slow else behaviour.latency_s
        if not stream:
            await asyncio.sleep(delay)
            return web.json_response(completion(self.name, model), headers=headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               **headers})
        try:
            await response.prepare(request)  # the headers go at once; the first event comes after `delay`
            await asyncio.sleep(delay)
            for index, event in enumerate(stream_events(self.name, model)):
                if index:
                    await asyncio.sleep(self.EVENT_GAP_S)
                await response.write(event)
            await response.write_eof()
        except ConnectionError:
            pass  # the router went away (a hedge won elsewhere, or the client left)
        return response

    async def _models(self, request: web.Request) -> web.Response:
        behaviour, now = self.behaviour(), self.now()
        self.records.append(Received(now, "models", False, behaviour.status))
        if behaviour.status != 200:
            return error_response(behaviour.status, f"{self.name} is failing", None)
        return web.json_response({"object": "list", "data": [
            {"id": "fake-model", "object": "model", "created": 1718822400, "owned_by": self.name}]})

    async def _other(self, request: web.Request) -> web.Response:
        self.records.append(Received(self.now(), request.path, False, 404))
        return error_response(404, f"no route {request.path}", "not_found")
