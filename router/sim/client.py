"""The simulated wire: an HTTP client whose providers are `ProviderModel`s, under the router's real transport.

The transport (`router/upstream/transport.py`) asks a client to `post` and reads a `Body` (the
seam of `router/upstream/client.py`). `SimClient` answers there, after the delays the models
decide, with the bytes a provider would send. Everything above it is the production code:
the transport's connection slots (`max_connections`), its first-byte and idle timeouts capped by
the deadline, the SSE parser, the engine. So `first_byte_s`, `idle_s`, `ttft_s` and `deadline_s`
apply exactly as they do over HTTP; on a `VirtualTimeLoop` they cost a timer each, not their time.

`SimClient` needs only a running loop: on real time it would pace answers for real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

from multidict import CIMultiDict, CIMultiDictProxy

from router.clock import Clock
from router.policy.model import Policy, Provider
from router.sim.loop import waker
from router.sim.provider import REFUSED, SILENT, STALL_AFTER_READS, STATUS, STREAM_GAP_S, ProviderModel
from router.upstream.errors import ConnectFailed
from router.upstream.transport import HttpTransport


def _headers(content_type: str, **extra: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({"Content-Type": content_type, **extra}))


_JSON_HEADERS = _headers("application/json")
_SSE_HEADERS = _headers("text/event-stream")
_RETRY_AFTER_HEADERS: dict[int, CIMultiDictProxy[str]] = {}


def _error_headers(retry_after: int | None) -> CIMultiDictProxy[str]:
    if retry_after is None:
        return _JSON_HEADERS
    headers = _RETRY_AFTER_HEADERS.get(retry_after)
    if headers is None:
        headers = _RETRY_AFTER_HEADERS[retry_after] = _headers("application/json", **{"Retry-After": str(retry_after)})
    return headers


async def _forever() -> None:
    """A provider that never sends: ends only when the transport's timeout (or the caller) cancels it."""
    await asyncio.get_running_loop().create_future()


class SimBody:
    """An answer whose head arrived (the transport's `Body`): `reads[i]` is due at `first_at + i * gap`;
    a stalled one delivers `available` reads and then nothing, ever. `time` and `wake` are the loop's
    clock and a `waker` of it."""

    __slots__ = ("_available", "_first_at", "_gap", "_next", "_reads", "_time", "_wake", "headers", "resent",
                 "status")

    def __init__(self, time: Callable[[], float], wake: Callable[[float], asyncio.Future[None]], status: int,
                 headers: Mapping[str, str], reads: tuple[bytes, ...], first_at: float, gap: float = 0.0,
                 available: int | None = None) -> None:
        self.status = status
        self.headers = headers
        self.resent = False
        self._time = time
        self._wake = wake
        self._reads = reads
        self._first_at = first_at
        self._gap = gap
        self._available = len(reads) if available is None else available
        self._next = 0

    def ready(self) -> bool:
        if self._next < self._available:
            return self._first_at + self._next * self._gap <= self._time()
        return self._available == len(self._reads)  # at the end: the EOF is there; a stall never is

    def at_eof(self) -> bool:
        return self._next >= len(self._reads)

    async def readany(self) -> bytes:
        index = self._next
        if index < self._available:
            due = self._first_at + index * self._gap
            if due > self._time():
                await self._wake(due)
            self._next = index + 1
            return self._reads[index]
        if index >= len(self._reads):
            return b""
        await _forever()  # stalled
        return b""

    async def readany_within(self, limit: float) -> bytes:
        """readany(), or TimeoutError when nothing arrives within `limit` (one timer a read, like the
        fast client's)."""
        index, now = self._next, self._time()
        if index < self._available:
            due = self._first_at + index * self._gap
            if due <= now + limit:
                if due > now:
                    await self._wake(due)
                self._next = index + 1
                return self._reads[index]
        elif index >= len(self._reads):
            return b""
        await self._wake(now + limit)
        raise TimeoutError

    async def read(self) -> bytes:
        parts = []
        while chunk := await self.readany():
            parts.append(chunk)
        return b"".join(parts)

    def release(self) -> None:
        pass

    def finish(self) -> None:
        pass

    def close(self) -> None:
        pass


class SimClient:
    """The transport's HTTP client (`router/upstream/client.py`), answered by the providers' models.
    `origin`: the loop time of the simulation's second 0, which the models' outages are measured from."""

    def __init__(self, models: Mapping[str, ProviderModel], *, origin: float = 0.0) -> None:
        self.models = models
        self.origin = origin
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: Callable[[float], asyncio.Future[None]] | None = None  # a waker of _loop

    def prepare(self, provider: Provider) -> ProviderModel:
        return self.models[provider.name]

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool, connect_s: float,
                   traceparent: str | None = None, *_more: object) -> SimBody:
        model: ProviderModel = prepared  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        wake = self._wake
        if loop is not self._loop or wake is None:
            self._loop, self._wake = loop, wake = loop, waker(loop)
        time = loop.time
        decision = model.decide(time() - self.origin, stream)
        kind = decision.kind
        if kind == REFUSED:
            raise ConnectFailed("connection refused (simulated outage)")
        if kind == SILENT:
            await _forever()
        head_at = time() + decision.delay_s
        if decision.delay_s > 0:
            await wake(head_at)
        answers = model.answers
        if kind == STATUS:
            return SimBody(time, wake, decision.status, _error_headers(decision.retry_after),
                           (answers.error(decision.status),), head_at)
        if not stream:
            return SimBody(time, wake, 200, _JSON_HEADERS, answers.json_reads, head_at)
        if model.instant:
            return SimBody(time, wake, 200, _SSE_HEADERS, answers.stream_whole_reads, head_at)
        return SimBody(time, wake, 200, _SSE_HEADERS, answers.stream_reads, head_at, STREAM_GAP_S,
                       STALL_AFTER_READS if decision.stalled else None)

    async def aclose(self) -> None:
        pass


class SimTransport(HttpTransport):
    """The production transport with `SimClient` in place of both HTTP clients."""

    def __init__(self, policy: Policy, client: SimClient, *, clock: Clock) -> None:
        super().__init__(policy.providers, clock=clock, clients={"fast": client, "aiohttp": client})
        self.client = client
