"""One structured JSON line per request: who, what route, where it went, how it ended.

No keys, no prompts, no raw client strings other than the sanitised request id.

The daemon installs a `LineSink` on stdout: lines are encoded once and written
in batches every `FLUSH_INTERVAL_S`, because going through `logging` (a
LogRecord, a formatter, a write and a flush per request) cost ~20 µs a request,
a noticeable share of the router's CPU. Without a sink (embedded use, tests) the
lines go to the `router.access` logger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import TextIO

import orjson

access_logger = logging.getLogger("router.access")


@dataclass(slots=True)
class AccessRecord:
    request_id: str
    method: str
    path: str
    client: str = "-"
    route: str | None = None
    provider: str | None = None
    attempts: int = 0
    status: int = 0
    outcome: str = "unknown"
    stream: bool = False
    latency_ms: float = 0.0
    ttfb_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


_TS_PREFIX = b'{"ts":%.3f,'


def encode_record(record: AccessRecord) -> str:
    """The JSON line: `ts` (Unix seconds), then the record's fields in order. orjson encodes the
    dataclass directly: 1.7 µs against 5.1 µs for assembling the line by hand in Python."""
    try:
        body = orjson.dumps(record)
    except TypeError:  # a lone surrogate in a string, which orjson refuses: escape it as json does
        body = json.dumps({name: getattr(record, name) for name in record.__slots__}).encode()
    return (_TS_PREFIX % time.time() + body[1:]).decode()


FLUSH_INTERVAL_S = 0.1


class LineSink:
    """Buffered JSON lines to a stream, flushed at most `FLUSH_INTERVAL_S` after a write."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        self._lines.append(line)
        if self._timer is None:
            try:
                self._timer = asyncio.get_running_loop().call_later(FLUSH_INTERVAL_S, self.flush)
            except RuntimeError:  # no loop: nothing will flush later, so flush now
                self.flush()

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            data = "\n".join(self._lines) + "\n"
            self._lines.clear()
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):
                pass  # a closed or broken stdout must not take requests down with it


_sink: LineSink | None = None


def use_sink(sink: LineSink | None) -> LineSink | None:
    """Install (or with None, remove) the daemon's access-log sink; returns the previous one."""
    global _sink
    previous, _sink = _sink, sink
    if previous is not None:
        previous.flush()
    return previous


def log_access(record: AccessRecord) -> None:
    sink = _sink
    if sink is None and not access_logger.isEnabledFor(logging.INFO):
        return
    line = encode_record(record)
    if sink is not None:
        sink.write(line)
    else:
        access_logger.info(line)
