"""A lean HTTP/1.1 client for the upstream hop: keep-alive pools over `asyncio.Protocol`, parsed by httptools.

Why not aiohttp's `ClientSession` (still available per provider as `http_client: aiohttp`):
on the benchmark VM it costs ~0.1 ms of CPU per request (URL joins, header
multidicts, tracing hooks, cookie jar, timers), half of what the router spends in
total; this client costs about a fifth of that (bench/README.md). It does only
what the router needs: one POST at a time per connection with a fully built
head, responses framed by Content-Length, chunked encoding or EOF, gzip/deflate
bodies, keep-alive reuse with an idle expiry (also after a stream the caller
stopped reading at its `[DONE]`: see `Connection.finish`), and read-side back-pressure.
It never follows redirects, keeps no cookies and uses no proxies.

Errors: `ConnectTimeout` (connect took too long), `CannotConnect` (refused, DNS, TLS),
another `OSError` (the connection broke; `ConnectionResetError` when the peer closed it),
`MalformedResponse` (the bytes are not HTTP/1.x, or the body does not decode).
"""

from __future__ import annotations

import asyncio
import ssl
import time
import zlib
from collections.abc import Iterable

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

# Read-side back-pressure: stop reading from the provider while this much is buffered and unread.
_HIGH_WATER = 256 * 1024
_LOW_WATER = 64 * 1024
# Bodies up to this size are sent in the same write as the head (one send, one packet when it fits).
_JOIN_LIMIT = 64 * 1024
# finish(): how long, and how many bytes, the rest of an answer the caller no longer needs may take
# before the connection is closed rather than reused. After a stream's `[DONE]` the rest is the
# chunked terminator, a few bytes that arrive a moment later.
DRAIN_S = 2.0
_DRAIN_LIMIT = 64 * 1024


class ConnectTimeout(TimeoutError):
    """The TCP (and TLS) connection was not established within the connect timeout."""


class CannotConnect(OSError):
    """Connecting failed: refused, unreachable, DNS, or the TLS handshake."""


class MalformedResponse(Exception):
    """The provider's bytes are not a valid HTTP/1.x response, or its body does not decode."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; it carries one exchange at a time and is its own response object."""

    __slots__ = ("_body", "_buffered", "_complete", "_decoder", "_drain_timer", "_drained", "_error", "_head",
                 "_headers", "_keep_alive", "_paused", "_pool", "_reader", "_until_eof", "closed", "headers",
                 "idle_since", "parser", "status", "transport")

    def __init__(self, pool: Pool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._drain_timer: asyncio.TimerHandle | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: CIMultiDictProxy[str] = _NO_HEADERS
        self._headers: list[tuple[str, str]] = []
        self._head: asyncio.Future[None] | None = None
        self._reader: asyncio.Future[None] | None = None
        self._body: list[bytes] = []
        self._buffered = 0
        self._complete = False
        self._keep_alive = False
        self._until_eof = False
        self._paused = False
        self._decoder: zlib._Decompress | None = None
        self._error: BaseException | None = None
        self._drained = -1  # >= 0 while finish() drains the rest of the answer: the bytes dropped so far

    # -- one exchange ----------------------------------------------------------------------------
    def send(self, head: bytes, body: bytes, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Write the request; the returned future resolves when the response head has arrived."""
        self._reset()
        self._head = loop.create_future()
        transport = self.transport
        assert transport is not None
        if len(body) <= _JOIN_LIMIT:
            transport.write(head + body)
        else:
            transport.write(head)
            transport.write(body)
        return self._head

    async def readany(self) -> bytes:
        """The next piece of the (decoded) body, b"" once it is complete."""
        while not self._body:
            if self._error is not None:
                raise self._error
            if self._complete:
                return b""
            self._reader = asyncio.get_running_loop().create_future()
            try:
                await self._reader
            finally:
                self._reader = None
        data = b"".join(self._body) if len(self._body) > 1 else self._body[0]
        self._body.clear()
        self._buffered = 0
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return data

    async def read(self) -> bytes:
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._complete and not self._body

    def release(self) -> None:
        """Done with this exchange: a complete, reusable connection goes back to the pool, else it closes."""
        if self._complete and self._keep_alive and self._error is None and not self.closed:
            self._pool.put_back(self)
        else:
            self.close()

    def finish(self) -> None:
        """Done with this exchange before its answer ended (a stream's `[DONE]` came before the chunked
        terminator): the rest is read and dropped in the background and the connection goes back to the
        pool when the answer completes, within DRAIN_S and _DRAIN_LIMIT bytes; otherwise it closes.
        Reusing it spares the next request a new connection (on TLS, a handshake)."""
        if self._complete or self._error is not None or self.closed or not self._keep_alive or self._until_eof \
                or self.transport is None:
            self.release()
            return
        self._body.clear()
        self._buffered = 0
        self._drained = 0
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        self._drain_timer = asyncio.get_running_loop().call_later(DRAIN_S, self.close)

    def close(self) -> None:
        self._cancel_drain_timer()
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.close()

    def _cancel_drain_timer(self) -> None:
        if self._drain_timer is not None:
            self._drain_timer.cancel()
            self._drain_timer = None

    # -- asyncio.Protocol ------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._head is None or self._complete:
            # Bytes nobody asked for (an idle connection, or more after a complete answer): the
            # connection's framing can no longer be trusted, so it is not used again.
            self._fail(MalformedResponse("unsolicited data from the provider"))
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedResponse("unexpected protocol upgrade"))
        except httptools.HttpParserError as exc:
            self._fail(MalformedResponse(f"invalid HTTP response ({exc})"))
        except MalformedResponse as exc:  # raised by a callback (a body that does not decode)
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        closed_here = self.closed  # by close(): the pool, the reader or a failure, not the provider
        self.closed = True
        self._pool.forget(self)
        if self._until_eof and not closed_here and self._head is not None and self._head.done() and exc is None \
                and not self._complete:
            self.on_message_complete()  # a body without length or chunking ends at the provider's EOF
            return
        if not self._complete:
            self._fail(exc or (ConnectionAbortedError("connection closed by the router") if closed_here
                               else ConnectionResetError("connection closed by the provider")))

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        head, reader = self._head, self._reader
        if head is not None and not head.done():
            head.set_exception(exc)
        elif reader is not None and not reader.done():
            reader.set_result(None)
        self.close()

    # -- httptools callbacks -----------------------------------------------------------------------
    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.decode("latin-1"), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        if self.status:  # a second final answer to one request
            raise MalformedResponse("more than one response to one request")
        status = self.parser.get_status_code()
        if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): wait for the real one
            self._headers = []
            return
        self.status = status
        headers = CIMultiDict(self._headers)
        self.headers = CIMultiDictProxy(headers)
        self._keep_alive = self.parser.should_keep_alive()
        self._until_eof = "Content-Length" not in headers and "Transfer-Encoding" not in headers
        encoding = headers.get("Content-Encoding", "").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj()
        elif encoding not in ("", "identity"):
            raise MalformedResponse(f"unsupported Content-Encoding {encoding!r}")
        head = self._head
        if head is not None and not head.done():
            head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._drained >= 0:
            self._drained += len(body)
            if self._drained > _DRAIN_LIMIT:
                self.close()
            return
        if self._decoder is not None:
            try:
                body = self._decoder.decompress(body)
            except zlib.error as exc:
                raise MalformedResponse(f"body does not decode ({exc})") from None
            if not body:
                return
        self._body.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake_reader()

    def on_message_complete(self) -> None:
        if self.status == 0:  # the end of an interim answer
            return
        if self._drained >= 0:
            self._complete = True
            self._drained = -1
            self._cancel_drain_timer()
            self.release()
            return
        if self._decoder is not None:
            tail = self._decoder.flush()
            if tail:
                self._body.append(tail)
        self._complete = True
        self._wake_reader()

    def _wake_reader(self) -> None:
        reader = self._reader
        if reader is not None and not reader.done():
            reader.set_result(None)


_NO_HEADERS: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())


class Pool:
    """Keep-alive connections to one origin (scheme, host, port)."""

    def __init__(self, host: str, port: int, *, tls: ssl.SSLContext | None, keepalive_s: float) -> None:
        self._host = host
        self._port = port
        self._tls = tls
        self._keepalive_s = keepalive_s
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()  # idle and in use: closing the pool ends them all
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def acquire(self, connect_timeout: float) -> Connection:
        """A reused idle connection, or a new one within `connect_timeout` (ConnectTimeout, OSError)."""
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed:
                return connection
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: Connection(self), self._host, self._port, ssl=self._tls,
                    server_hostname=self._host if self._tls is not None else None)
        except TimeoutError:
            raise ConnectTimeout(f"no connection within {connect_timeout:.3g}s") from None
        except OSError as exc:
            raise CannotConnect(exc.errno, f"cannot connect to {self._host}:{self._port}: "
                                           f"{exc.strerror or type(exc).__name__}") from None
        if self._closed:  # closed while connecting
            protocol.close()
            raise ConnectionResetError("the connection pool is closed")
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
