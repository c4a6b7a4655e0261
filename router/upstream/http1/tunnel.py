"""A CONNECT tunnel through an HTTP proxy, then TLS to the provider inside it (RFC 9110, section 9.3.6).

The proxy sees the provider's host and port, never the request: TLS runs end to end, with the
provider's certificate checked against its own host name. The proxy's answer is parsed by llhttp
(httptools), and is held to limits like any peer's: its head must fit in 16 KiB, and nothing may
follow a 2xx before the client speaks (a proxy that did would be injecting bytes into the tunnel).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable

import httptools

from router.policy.model import Proxy
from router.upstream.errors import ConnectFailed
from router.upstream.http1.connection import Connection

MAX_HEAD_BYTES = 16 * 1024


def connect_request(host: str, port: int, authorization: str | None) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if authorization is not None:
        lines.append(f"Proxy-Authorization: {authorization}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


class _ProxyAnswer(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT: `status` resolves once its head arrived whole."""

    def __init__(self) -> None:
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._head = bytearray()
        self._parser = httptools.HttpResponseParser(self)
        self._code = 0

    def on_headers_complete(self) -> None:
        self._code = self._parser.get_status_code()

    def data_received(self, data: bytes) -> None:
        if self.status.done():
            return
        self._head += data
        end = self._head.find(b"\r\n\r\n")
        if end < 0:
            if len(self._head) > MAX_HEAD_BYTES:
                self._refuse("sent an answer head over 16 KiB")
            return
        try:
            self._parser.feed_data(bytes(self._head[:end + 4]))
        except httptools.HttpParserError:
            self._refuse("sent a malformed answer")
            return
        if self._code == 0:
            self._refuse("sent a malformed answer")
        elif 200 <= self._code < 300 and len(self._head) > end + 4:
            self._refuse("sent bytes after its answer, before the tunnel was used")
        else:
            self.status.set_result(self._code)

    def connection_lost(self, exc: Exception | None) -> None:
        self._refuse("closed the connection before answering")

    def _refuse(self, why: str) -> None:
        if not self.status.done():
            self.status.set_exception(ConnectFailed(f"the proxy {why}"))


async def open_tunnel(loop: asyncio.AbstractEventLoop, proxy: Proxy, host: str, port: int,
                      tls: ssl.SSLContext | None, connection: Callable[[], Connection]) -> Connection:
    """A connection to host:port through `proxy`, TLS inside when `tls` is given. The caller bounds the
    time (its connect timeout covers the proxy, the tunnel and the handshake)."""
    transport, answer = await loop.create_connection(_ProxyAnswer, proxy.host, proxy.port)
    try:
        transport.write(connect_request(host, port, proxy.authorization))
        status = await answer.status
        if not 200 <= status < 300:
            hint = " (check the user and password in " + proxy.variable + ")" if status == 407 else ""
            raise ConnectFailed(f"the proxy {proxy.url} refused the tunnel to {host}:{port} with a {status}{hint}")
        protocol = connection()
        if tls is None:
            transport.set_protocol(protocol)
            protocol.connection_made(transport)
            return protocol
        secure = await loop.start_tls(transport, protocol, tls, server_hostname=host)
    except BaseException:
        transport.close()
        raise
    assert secure is not None
    protocol.connection_made(secure)
    return protocol
