"""A scripted HTTP/1.1 server on loopback: it reads each request (head and Content-Length body) and
answers with exactly the bytes a test scripts, written piece by piece, so framing edge cases reach
the client split where the test says. The upstream clients' tests and contract suite use it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

COMPLETION = b'{"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}'


@dataclass
class Request:
    head: bytes  # request line and header lines, without the blank line
    body: bytes

    @property
    def line(self) -> str:
        return self.head.split(b"\r\n", 1)[0].decode()

    @property
    def headers(self) -> list[tuple[str, str]]:
        lines = self.head.decode("latin-1").split("\r\n")[1:]
        return [(name, value.strip()) for name, _, value in (line.partition(":") for line in lines)]

    def header(self, name: str) -> str:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        assert len(values) == 1, f"{name}: {values}"
        return values[0]


@dataclass
class Peer:
    """One accepted connection, seen from the server."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    requests: list[Request] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)  # the client closed (or reset) the connection

    async def read_to_eof(self) -> None:
        """Stay silent until the client goes away."""
        try:
            while await self.reader.read(65536):
                pass
        except ConnectionError:
            pass
        self.eof.set()


Handler = Callable[[Request, Peer], Awaitable[None]]


class ScriptedServer:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.peers: list[Peer] = []
        self.requests: list[Request] = []
        self.received = asyncio.Event()  # at least one request arrived
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.base_url = ""
        self.port = 0

    async def start(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self._server = await asyncio.start_server(self._serve, host, 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.base_url = f"{'https' if tls else 'http'}://{shown}:{self.port}/api/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            while not writer.is_closing():
                head = (await reader.readuntil(b"\r\n\r\n"))[:-4]
                request = Request(head, b"")
                length = [v for k, v in request.headers if k.lower() == "content-length"]
                request.body = await reader.readexactly(int(length[0])) if length else b""
                peer.requests.append(request)
                self.requests.append(request)
                self.received.set()
                await self.handler(request, peer)
        except (asyncio.IncompleteReadError, ConnectionError):
            peer.eof.set()
        except asyncio.CancelledError:
            pass  # close() ends a handler that waits forever; a cancelled callback task is logged as an error
        finally:
            writer.close()
            self._tasks.discard(task)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()


async def dribble(writer: asyncio.StreamWriter, *pieces: bytes) -> None:
    """Write each piece on its own, letting the client read it before the next one is written."""
    for piece in pieces:
        writer.write(piece)
        await writer.drain()
        for _ in range(3):
            await asyncio.sleep(0)


def answer(*pieces: bytes, close: bool = False) -> Handler:
    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, *pieces)
        if close:
            peer.writer.close()

    return handle


async def silent(request: Request, peer: Peer) -> None:
    await peer.read_to_eof()


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0) instead of a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def response(body: bytes = COMPLETION, status: str = "200 OK", *headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Content-Type: application/json", *headers, f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def chunked_head(*headers: str) -> bytes:
    lines = ["HTTP/1.1 200 OK", "Content-Type: text/event-stream", "Transfer-Encoding: chunked", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


LAST_CHUNK = b"0\r\n\r\n"
