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


class Response:
    """Status, headers, and the (decoded) body pieces as they arrive; `readany` returns them."""

    __slots__ = ("_buffered", "_chunks", "_connection", "_ended", "_error", "_waiter", "headers", "resent", "status")

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
        data = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        chunks.clear()
        self._buffered = 0
        self._connection.resume_reading()
        return data

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
        self._connection.release(self)

    def finish(self) -> None:
        """Done before the body ended (a stream's `[DONE]` came before its terminator): the
        connection reads and drops the rest, then goes back to the pool (see Connection.finish)."""
        self._connection.finish(self)

    def close(self) -> None:
        """Done, whatever is left: the connection closes unless it was already handed back."""
        self._connection.discard(self)

    # -- fed by the connection ---------------------------------------------------------------------
    def feed(self, data: bytes) -> int:
        self._chunks.append(data)
        self._buffered += len(data)
        self._wake()
        return self._buffered

    def end(self) -> None:
        self._ended = True
        self._wake()

    def fail(self, exc: TransportError) -> None:
        if not self._ended and self._error is None:
            self._error = exc
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
