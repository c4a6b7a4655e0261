"""chat.Exchange over a fast-front connection: the request as the front read it, the answer as HTTP/1.1 bytes."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from router.errors import StreamInterrupted
from router.server import wire
from router.server.answer import Answer
from router.server.chat import BodyRefused, piece

if TYPE_CHECKING:
    from router.server.front import _Connection


class FastExchange:
    __slots__ = ("_body", "_connection", "_head", "_too_large", "_transport", "close", "headers", "started")
    method = "POST"
    path = "/v1/chat/completions"

    def __init__(self, connection: _Connection, transport: asyncio.Transport, head: wire.RequestHead,
                 body: bytes, *, too_large: int | None = None) -> None:
        """`too_large`: the body limit the declared length is over (the body was not read)."""
        self._connection, self._transport, self.headers, self._body = connection, transport, head.headers, body
        self._too_large = too_large
        self.close = head.close  # after this answer (the client asked, or the answer or a drain decides)
        self.started = False
        self._head = b""  # a stream's head, until it goes out with the first event

    async def read_body(self) -> bytes:
        if self._too_large is not None:
            # Refused at once, from its declared length: no point waiting for a body that will not do.
            raise BodyRefused(413, f"request body is larger than {self._too_large} bytes", code="body_too_large",
                              closing=True)
        return self._body

    async def send(self, answer: Answer) -> None:
        transport, tap = self._transport, self._connection.front.tap
        self.close = close = self.close or answer.close or self._connection.front.closing
        if answer.stream is None:
            transport.write(wire.answer_head(answer.status, answer.headers, length=len(answer.body), close=close)
                            + answer.body)
            self.started = True
            if tap is not None:
                tap(answer.status, answer.headers, answer.body)
            return
        # The head goes out with the first event: one write, as aiohttp does with SseResponse.
        self._head = wire.answer_head(answer.status, answer.headers, length=None, close=close)
        ended = False
        try:  # events(answer), inline: one frame less per upstream read
            async for batch in answer.stream.batches():
                data, ended = piece(batch)
                await self.write_event(data, last=ended)  # the end goes out with the chunked terminator
        except StreamInterrupted:
            ended = False  # its error event went out, and no [DONE]: the terminator follows below
        if not ended:
            transport.write(self._pending_head() + wire.LAST_CHUNK)
        self.started = True
        if tap is not None:
            tap(answer.status, answer.headers, None)

    async def write_event(self, data: bytes, *, last: bool = False) -> None:
        """One piece of the stream (the events of one upstream read) in one write; `last`: with the
        chunked terminator."""
        transport = self._transport
        if transport.is_closing():
            raise ConnectionResetError("the client closed the connection")
        piece = wire.chunk(data) + wire.LAST_CHUNK if last else wire.chunk(data)
        head = self._head
        if head:
            self._head = b""
            transport.write(head + piece)
        else:
            transport.write(piece)
        self.started = True
        connection = self._connection
        if connection.paused:  # the client reads slower than the provider writes: wait for it
            await connection.drain()

    def _pending_head(self) -> bytes:
        head, self._head = self._head, b""
        return head

    def abort(self) -> None:
        self.close = True
        self._transport.abort()
