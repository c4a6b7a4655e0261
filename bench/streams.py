"""The streaming scenarios of run.py: what users mostly run, measured against the same references.

- `wrk_script`: a wrk Lua script posting one scenario's request (an `instant-N` stream, a large
  prompt); wrk reads each chunked stream to its end, so its requests/s are streams/s.
- `paced_crowd`: many streams at once, each paced by the fake upstream (`paced-N-MS`), read by
  a bare asyncio client that timestamps every event: the gaps between events as the caller sees
  them, and the events delivered (for the CPU per event).
- `instant_ttfb`: one client, sequential instant streams: the time to the first event.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

PROMPT_WORDS = "Explain quantum computing in one paragraph. "
WARMUP = 5  # events of each crowd stream before its gaps count


def request_body(model: str, *, stream: bool, prompt_bytes: int = 0) -> dict:
    """A chat request; `prompt_bytes` pads the user message to about that size (large prompts)."""
    content = PROMPT_WORDS * max(1, prompt_bytes // len(PROMPT_WORDS)) if prompt_bytes else PROMPT_WORDS.strip()
    body: dict = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 250}
    if stream:
        body["stream"] = True
    return body


def wrk_script(directory: Path, name: str, body: dict) -> Path:
    path = directory / f"{name}.lua"
    path.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                    f"wrk.body = {json.dumps(json.dumps(body))}\n")
    return path


@dataclass
class Crowd:
    streams: int  # streams read to their end
    events: int  # events delivered
    gaps_ms: list[float]  # between consecutive events of one stream, the first event excluded
    failed: int  # streams that did not end with the chunked terminator


class _StreamReader(asyncio.Protocol):
    """Reads one chunked event stream at a time; `done` resolves when its last chunk arrived."""

    def __init__(self, crowd: Crowd) -> None:
        self._crowd = crowd
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[bool] | None = None
        self._last: float | None = None
        self._seen = 0
        self._tail = b""
        self._lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def start(self, request: bytes) -> asyncio.Future[bool]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self._last = None
        self._seen = 0
        self._tail = b""
        self.transport.write(request)
        return self.done

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        count = data.count(b"\n\n")  # events in this read (SSE blocks end with a blank line)
        crowd = self._crowd
        if count:
            # The first gaps of a stream fall while the crowd is still starting (a thousand requests
            # and first events at once): only gaps once the stream is WARMUP events in are counted.
            if self._last is not None and self._seen >= WARMUP:
                crowd.gaps_ms.append((now - self._last) * 1000)
                crowd.gaps_ms.extend([0.0] * (count - 1))  # events that came in the same read
            self._last = now
            self._seen += count
            crowd.events += count
        tail = (self._tail + data)[-7:]
        self._tail = tail
        if tail.endswith(b"\r\n0\r\n\r\n"[-7:]) and self.done is not None and not self.done.done():
            crowd.streams += 1
            self.done.set_result(True)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(False)


async def paced_crowd(port: int, *, streams: int, model: str, waves: int, timeout_s: float) -> Crowd:
    """`streams` connections at once, each reading `waves` streams one after the other."""
    crowd = Crowd(streams=0, events=0, gaps_ms=[], failed=0)
    loop = asyncio.get_running_loop()
    payload = json.dumps(request_body(model, stream=True)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload))

    async def connect() -> _StreamReader:
        _, reader = await loop.create_connection(lambda: _StreamReader(crowd), "127.0.0.1", port)
        return reader

    async def one(reader: _StreamReader) -> None:
        try:
            for _ in range(waves):
                if not await reader.start(request):
                    crowd.failed += 1
                    return
        finally:
            assert reader.transport is not None
            reader.transport.close()

    readers = await asyncio.gather(*(connect() for _ in range(streams)))  # all connected, then all asking
    tasks = [asyncio.ensure_future(one(reader)) for reader in readers]
    done, pending = await asyncio.wait(tasks, timeout=timeout_s)
    for task in pending:
        task.cancel()
        crowd.failed += 1
    for task in done:
        if task.exception() is not None:
            crowd.failed += 1
    return crowd


async def instant_ttfb(port: int, count: int, model: str = "instant-21") -> list[float]:
    """Milliseconds to the first event of `count` sequential streams on one connection (the first,
    which also connects, not counted)."""
    loop = asyncio.get_running_loop()
    payload = json.dumps(request_body(model, stream=True)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
               b"Content-Length: %d\r\n\r\n%b" % (len(payload), payload))
    reader_box: list[_FirstEvent] = []
    transport, _ = await loop.create_connection(lambda: reader_box.append(_FirstEvent()) or reader_box[0],
                                                "127.0.0.1", port)
    reader = reader_box[0]
    times: list[float] = []
    try:
        for index in range(count + 1):
            first, end = reader.arm()
            start = time.perf_counter()
            transport.write(request)
            arrived = await asyncio.wait_for(first, 10)
            await asyncio.wait_for(end, 10)
            if index:
                times.append((arrived - start) * 1000)
    finally:
        transport.close()
    return times


class _FirstEvent(asyncio.Protocol):
    def __init__(self) -> None:
        self._first: asyncio.Future[float] | None = None
        self._end: asyncio.Future[None] | None = None
        self._tail = b""

    def arm(self) -> tuple[asyncio.Future[float], asyncio.Future[None]]:
        loop = asyncio.get_running_loop()
        self._first, self._end, self._tail = loop.create_future(), loop.create_future(), b""
        return self._first, self._end

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self._first is not None and not self._first.done() and b"\n\n" in self._tail + data:
            self._first.set_result(now)
        self._tail = (self._tail + data)[-7:]
        if self._tail.endswith(b"\r\n0\r\n\r\n"[-7:]) and self._end is not None and not self._end.done():
            self._end.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self._first, self._end):
            if future is not None and not future.done():
                future.set_exception(ConnectionError("closed"))
