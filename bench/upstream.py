"""A fast fake upstream for benchmarks, on a bare asyncio.Protocol so it costs as little as possible.

What it answers depends on the request, so one process serves every scenario:

- no `"stream": true`: a fixed chat completion (Content-Length);
- a stream whose `model` is `instant-N`: N events (N-2 content chunks, the finish chunk and
  `[DONE]`), each about 240 bytes like a real provider's, in one write, chunked;
- `paced-N-MS`: the same N events, MS milliseconds apart, sent by one timer wheel (1,000 paced
  streams cost one timer, not 1,000);
- any other stream: `min(--chunks, max_tokens)` content chunks `--pace` seconds apart, then the
  finish chunk and `[DONE]` (the time-to-first-event and gap measurements of run.py).

It trusts its peers (loopback, the benchmark's own clients): requests with a Content-Length only,
no limits. Not a model of a provider's HTTP, only of its bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

COMPLETION = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1718822400, "model": "bench-model",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Quantum computing leverages..."},
                 "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 15, "completion_tokens": 72, "total_tokens": 87},
}).encode()
_JSON_ANSWER = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                % len(COMPLETION)) + COMPLETION
_STREAM_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n" \
               b"Transfer-Encoding: chunked\r\n\r\n"
_LAST_CHUNK = b"0\r\n\r\n"
_MAX_TOKENS = re.compile(rb'"max_tokens":\s*(\d+)')
_MODEL = re.compile(rb'"model":\s*"([^"]*)"')
_STREAM = re.compile(rb'"stream":\s*true')
_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)
DONE = b"data: [DONE]\n\n"


def event(content: str | None, finish: str | None = None) -> bytes:
    """One chunk event the way OpenAI's API sends it (system_fingerprint, logprobs: ~240 bytes)."""
    delta = {"content": content} if content is not None else {}
    payload = {"id": "chatcmpl-bench-0123456789abcdef", "object": "chat.completion.chunk", "created": 1718822400,
               "model": "bench-model", "system_fingerprint": "fp_bench01",
               "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def events(count: int) -> list[bytes]:
    """`count` events in all: content chunks, the finish chunk, [DONE]."""
    return [event(f"word{index} ") for index in range(max(count - 2, 0))] + [event(None, "stop"), DONE]


def chunked(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class _Ticker:
    """Paced streams on a timer wheel of 5 ms slots: each stream's events fall on exact multiples of its
    period from its start, and a slot's streams are written together (1,000 streams 100 ms apart are
    20 slots of 50 writes, not one burst of 1,000 nor 1,000 timers)."""

    STEP = 0.005

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._slots: dict[int, list[tuple[int, asyncio.Transport, list[bytes]]]] = {}
        self._next: int | None = None  # the slot the wheel's timer is set for

    def add(self, period: float, transport: asyncio.Transport, pending: list[bytes]) -> None:
        every = max(1, round(period / self.STEP))
        now = int(self._loop.time() / self.STEP)
        self._slots.setdefault(now + every, []).append((every, transport, pending))
        if self._next is None:
            self._next = now + 1
            self._loop.call_at(self._next * self.STEP, self._tick)

    def _tick(self) -> None:
        slot = self._next
        assert slot is not None
        for every, transport, pending in self._slots.pop(slot, ()):
            if transport.is_closing():
                continue
            data = chunked(pending.pop(0))
            if not pending:
                transport.write(data + _LAST_CHUNK)
                continue
            transport.write(data)
            self._slots.setdefault(slot + every, []).append((every, transport, pending))
        if self._slots:
            self._next = slot + 1
            self._loop.call_at(self._next * self.STEP, self._tick)
        else:
            self._next = None


class _Upstream(asyncio.Protocol):
    def __init__(self, settings: argparse.Namespace, ticker: _Ticker, instant: dict[int, bytes]) -> None:
        self._settings = settings
        self._ticker = ticker
        self._instant = instant
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            match = _LENGTH.search(self._buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(self._buffer) < total:
                return
            body, self._buffer = self._buffer[end + 4:total], self._buffer[total:]
            self._answer(body)

    def _answer(self, body: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if _STREAM.search(body) is None:
            transport.write(_JSON_ANSWER)
            return
        model_match = _MODEL.search(body)
        model = model_match.group(1).decode() if model_match else ""
        if model.startswith("instant-"):
            count = int(model.split("-")[1])
            answer = self._instant.get(count)
            if answer is None:
                answer = self._instant[count] = _STREAM_HEAD + chunked(b"".join(events(count))) + _LAST_CHUNK
            transport.write(answer)
            return
        if model.startswith("paced-"):
            _, count, period_ms = model.split("-")
            pending = events(int(count))
            transport.write(_STREAM_HEAD + chunked(pending.pop(0)))
            self._ticker.add(int(period_ms) / 1000, transport, pending)
            return
        limit = _MAX_TOKENS.search(body)
        count = min(self._settings.chunks, int(limit.group(1))) if limit else self._settings.chunks
        pending = [event(f"word{index} ") for index in range(count)] + [event(None, "stop"), DONE]
        transport.write(_STREAM_HEAD + chunked(pending.pop(0)))
        self._ticker.add(self._settings.pace, transport, pending)


async def serve(settings: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    ticker = _Ticker(loop)
    instant: dict[int, bytes] = {}
    server = await loop.create_server(lambda: _Upstream(settings, ticker, instant), "127.0.0.1", settings.port,
                                      backlog=4096)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=9301)
    parser.add_argument("--pace", type=float, default=0.05)
    parser.add_argument("--chunks", type=int, default=10)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
