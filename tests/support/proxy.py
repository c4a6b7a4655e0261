"""A forward HTTP proxy on loopback, for the egress tests: CONNECT tunnels (what an https provider
needs) and absolute-form requests (an http one), to host names it resolves itself from `hosts`, so a
test can name a provider that no resolver knows (tests/support/pki.PROVIDER_HOST) and prove the
router reached it through the proxy only. With `credentials` ("user:password") it answers 407 to a
request without them, as a corporate proxy does."""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Seen:
    method: str
    target: str
    authorization: str | None
    answer: int  # the proxy's own status: 200 (tunnel or forwarded), 407, 502


@dataclass
class ForwardProxy:
    hosts: Mapping[str, str]  # name -> address the proxy connects to
    credentials: str | None = None
    seen: list[Seen] = field(default_factory=list)
    port: int = 0
    _server: asyncio.Server | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            await self._answer(head, reader, writer)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _answer(self, head: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line, *lines = head.decode("latin-1").split("\r\n")
        method, target, _ = line.split(" ", 2)
        headers = {name.strip().lower(): value.strip()
                   for name, _, value in (item.partition(":") for item in lines if item)}
        authorization = headers.get("proxy-authorization")
        seen = Seen(method, target, authorization, 200)
        self.seen.append(seen)
        expected = None if self.credentials is None else "Basic " + base64.b64encode(self.credentials.encode()).decode()
        if expected is not None and authorization != expected:
            seen.answer = 407
            writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            path_and_rest = b""
        else:  # absolute form: forward it in origin form, without the proxy's own header
            parts = urlsplit(target)
            host, port = parts.hostname or "", str(parts.port or 80)
            origin_line = f"{method} {parts.path or '/'}{'?' + parts.query if parts.query else ''} HTTP/1.1"
            kept = [item for item in lines if item and not item.lower().startswith("proxy-authorization:")]
            path_and_rest = ("\r\n".join([origin_line, *kept]) + "\r\n\r\n").encode("latin-1")
        address = self.hosts.get(host.strip("[]"))
        if address is None:
            seen.answer = 502
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            await writer.drain()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection(address, int(port))
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream_writer.write(path_and_rest)
            await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        finally:
            upstream_writer.close()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(ConnectionError, OSError):
        if writer.can_write_eof():
            writer.write_eof()
