"""Keep-alive connections to one origin, and the request head they send."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Iterable

from router.policy.model import Proxy
from router.upstream.errors import ConnectFailed, ConnectionLost
from router.upstream.http1.connection import Connection
from router.upstream.http1.tunnel import open_tunnel


class Pool:
    """Keep-alive connections to one origin (scheme, host, port), directly or through a proxy's CONNECT
    tunnel (`tunnel`). An http origin behind a proxy is a pool of connections to the proxy itself, whose
    requests name the absolute URL (the client builds them so)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, keepalive_s: float,
                 tunnel: Proxy | None = None) -> None:
        self._host = host
        self._port = port
        self.tls = tls  # replaced on a policy reload (a renewed certificate): new connections use it
        self._tunnel = tunnel
        self._keepalive_s = keepalive_s
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()  # idle and in use: closing the pool ends them all
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def acquire(self, connect_timeout: float, *, fresh: bool = False) -> Connection:
        """A reused idle connection (unless `fresh`), or a new one within `connect_timeout` (ConnectFailed
        otherwise). An idle connection the provider closed, or sent anything on, is closed instead."""
        idle = self._idle
        while idle and not fresh:
            connection = idle.pop()
            if not connection.is_stale():
                connection.reused = True
                return connection
            connection.close()
        loop = asyncio.get_running_loop()
        tls = self.tls
        try:
            async with asyncio.timeout(connect_timeout):  # the TCP connection, the tunnel and the TLS handshake
                if self._tunnel is not None:
                    protocol = await open_tunnel(loop, self._tunnel, self._host, self._port, tls,
                                                 lambda: Connection(self))
                else:
                    _, protocol = await loop.create_connection(
                        lambda: Connection(self), self._host, self._port, ssl=tls,
                        server_hostname=self._host if tls is not None else None)
        except TimeoutError:
            raise ConnectFailed("connect timeout", timed_out=True) from None
        except OSError as exc:
            raise ConnectFailed(f"cannot connect to {self._host}:{self._port}"
                                f"{'' if self._tunnel is None else ' through ' + self._tunnel.url}: "
                                f"{exc.strerror or exc or type(exc).__name__}") from exc
        if self._closed:  # closed while connecting
            protocol.close()
            raise ConnectionLost("the connection pool is closed")
        self._open.add(protocol)
        return protocol

    def put_back(self, connection: Connection) -> None:
        if self._closed:
            connection.close()
            return
        connection.idle_since = time.monotonic()
        self._idle.append(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive_s, self._sweep)

    def forget(self, connection: Connection) -> None:
        # Called when a connection closes; an idle one must not be handed out again.
        self._open.discard(connection)
        if self._idle and connection in self._idle:
            self._idle.remove(connection)

    def _sweep(self) -> None:
        """Close connections idle for longer than keepalive_s: one sweep per keepalive_s, not a timer each."""
        self._sweeper = None
        cutoff = time.monotonic() - self._keepalive_s
        stale = [c for c in self._idle if c.idle_since <= cutoff]
        for connection in stale:
            connection.close()  # connection_lost removes it from the idle list
        self._idle = [c for c in self._idle if c.idle_since > cutoff and not c.closed]
        if self._idle:
            self._sweeper = asyncio.get_running_loop().call_later(self._keepalive_s, self._sweep)

    def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        self._idle = []
        connections, self._open = self._open, set()
        for connection in connections:
            connection.close()


def request_head(method: str, path: str, host_header: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """The bytes of a request head without its final Content-Length line and blank line."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host_header}", *(f"{name}: {value}" for name, value in headers)]
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")
