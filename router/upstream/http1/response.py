"""The body of one upstream answer, as a stream its reader pulls from.

Kept apart from the connection: an answer that arrived whole stays readable to its end
even if the connection fails right after it (bytes nobody asked for, a reset), and a
connection that goes back to the pool carries no trace of the last answer.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from multidict import CIMultiDictProxy

from router.upstream.errors import ResponseTooLarge, TransportError

if TYPE_CHECKING:
    from router.upstream.http1.connection import Connection

READ_MOST = 256 * 1024  # the most one readany() joins from what is buffered (one piece may be larger)


class Response:
    """Status, headers, and the (decoded) body pieces as they arrive; `readany` returns them."""

    __slots__ = ("_buffered", "_chunks", "_connection", "_ended", "_error", "_expires", "_waiter", "_watchdog",
                 "headers", "resent", "status")

    def __init__(self, connection: Connection, status: int, headers: CIMultiDictProxy[str]) -> None:
        self._connection = connection
        self.status = status
        self.headers = headers
        self.resent = False  # set by the fast client when the request went out twice
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._ended = False
        self._error: TransportError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._watchdog: asyncio.TimerHandle | None = None  # readany_within's one timer (see there)
        self._expires = 0.0

    @property
    def buffered(self) -> int:
        """Bytes arrived and not yet read."""
        return self._buffered

    async def readany(self) -> bytes:
        """The next piece of the body, b"" once it is complete; BodyCut if it broke off,
        ResponseTooLarge past `max_response_bytes`."""
        chunks = self._chunks
        while not chunks:
            if self._error is not None:
                raise self._error.with_traceback(None)  # a fresh traceback: no frames kept from earlier raises
            if self._ended:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        if len(chunks) == 1 or self._buffered <= READ_MOST:
            data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
            chunks.clear()
            self._buffered = 0
            self._connection.resume_reading()
            return data
        # One compressed read can inflate to many pieces at once (up to max_response_bytes): hand them
        # over READ_MOST at a time, so the reader parses and holds a slice, not the whole inflated read.
        taken, size = 1, len(chunks[0])
        while taken < len(chunks) and size + len(chunks[taken]) <= READ_MOST:
            size += len(chunks[taken])
            taken += 1
        data = b"".join(chunks[:taken])
        del chunks[:taken]
        self._buffered -= size
        return data  # reading stays paused: what is buffered comes first

    async def read(self) -> bytes:
        """The whole body, joined once at its end (an answer over the limit is never joined)."""
        parts: list[bytes] = []
        chunks = self._chunks
        while True:
            if chunks:
                parts += chunks
                chunks.clear()
                self._buffered = 0
                self._connection.resume_reading()
            if self._error is not None:
                raise self._error.with_traceback(None)  # a fresh traceback: no frames kept from earlier raises
            if self._ended:
                return b"".join(parts)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def at_eof(self) -> bool:
        return self._ended and not self._chunks

    def ready(self) -> bool:
        return bool(self._chunks) or self._ended or self._error is not None

    def release(self) -> None:
        """Done with a body read to its end: the connection goes back to the pool if it can."""
        self._disarm()
        self._connection.release(self)

    def finish(self) -> None:
        """Done before the body ended (a stream's `[DONE]` came before its terminator): the
        connection reads and drops the rest, then goes back to the pool (see Connection.finish)."""
        self._disarm()
        self._connection.finish(self)

    async def readany_within(self, limit: float) -> bytes:
        """readany(), or TimeoutError if nothing arrives within `limit` seconds.

        One timer per response instead of one per read (asyncio.timeout costs ~3 µs a read; a paced
        stream reads once per event): each wait only moves the expiry, and the timer, when it fires,
        either fails a wait that has gone on that long or comes back at the current expiry."""
        if self._chunks or self._ended or self._error is not None:
            return await self.readany()
        loop = asyncio.get_running_loop()
        self._expires = expires = loop.time() + limit
        watchdog = self._watchdog
        if watchdog is None or watchdog.when() > expires:
            if watchdog is not None:
                watchdog.cancel()
            self._watchdog = loop.call_at(expires, self._expire)
        return await self.readany()

    def _expire(self) -> None:
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self._ended or self._error is not None:
            return  # not waiting: the next wait arms it again
        loop = asyncio.get_running_loop()
        if loop.time() < self._expires:
            self._watchdog = loop.call_at(self._expires, self._expire)
        else:
            waiter.set_exception(TimeoutError())

    def _disarm(self) -> None:
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None

    def close(self) -> None:
        """Done, whatever is left: the connection closes unless it was already handed back."""
        self._disarm()
        self._connection.discard(self)

    # -- fed by the connection ---------------------------------------------------------------------
    def feed(self, data: bytes) -> int:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered

    def end(self) -> None:
        self._ended = True
        self._disarm()
        self._wake()

    def fail(self, exc: TransportError) -> None:
        if not self._ended and self._error is None:
            self._error = exc
            self._disarm()
            if isinstance(exc, ResponseTooLarge):  # what arrived is of no use and may be large
                self._chunks.clear()
                self._buffered = 0
            self._wake()

    def retract(self, exc: TransportError) -> None:
        """An answer that ended turns out broken (see Connection.data_received): its reader gets `exc`.
        Only before the reader could see the end, in the same read that ended it."""
        self._ended = False
        self._error = None
        self.fail(exc)

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
