"""Raw bytes to a server on loopback, and what came back: the statuses of its answers, and whether it
closed the connection. For corpora of malformed requests, where no HTTP client library would send
the bytes as they are."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import httptools


@dataclass(frozen=True)
class Conversation:
    statuses: tuple[int, ...]  # every answer's status, in order (-1: bytes that do not parse as an answer)
    closed: bool  # the server ended the connection, rather than waiting for more

    @property
    def served(self) -> int:
        """Answers that are not refusals: anything but a 4xx (a 1xx interim answer is not one either)."""
        return sum(1 for status in self.statuses if status >= 200 and not 400 <= status < 500)


class _Statuses:
    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.found: list[int] = []

    def on_headers_complete(self) -> None:
        # At the head, not the end of the message: the answer to a HEAD request has no body to wait for.
        self.found.append(self.parser.get_status_code())


async def converse(port: int, data: bytes, *, quiet_s: float = 0.3, within_s: float = 10.0,
                   host: str = "127.0.0.1") -> Conversation:
    """Send `data` in one write, then read until the server closes, or sends nothing for `quiet_s`.
    `within_s` bounds the whole exchange: a server that trickles bytes forever fails the test."""
    reader, writer = await asyncio.open_connection(host, port)
    statuses = _Statuses()
    closed = False
    try:
        writer.write(data)
        async with asyncio.timeout(within_s):
            while True:
                try:
                    received = await asyncio.wait_for(reader.read(1 << 16), quiet_s)
                except TimeoutError:
                    break
                except ConnectionError:
                    closed = True
                    break
                if not received:
                    closed = True
                    break
                try:
                    statuses.parser.feed_data(received)
                except httptools.HttpParserError:
                    statuses.found.append(-1)
                    break
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    return Conversation(tuple(statuses.found), closed)
