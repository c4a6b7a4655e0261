"""`http_client: aiohttp`: aiohttp's ClientSession, for a provider the lean client does not get along with.

aiohttp's exceptions are translated into the transport's own failures here and nowhere else.

aiohttp retries a request whose kept-alive connection the server had closed only for idempotent
methods, and every request here is a POST. So this client notes (with aiohttp's tracing) whether
a request went out on a reused connection, and sends it once more on a fresh one when that
connection died before any byte of the answer, as the fast client does.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import aiohttp
from aiohttp import http_exceptions
from yarl import URL

from router.errors import RouterError
from router.policy.model import Provider, TlsSettings
from router.upstream.client import KEEPALIVE_S, STREAM_ACCEPT, provider_headers
from router.upstream.errors import BodyCut, ConnectFailed, ConnectionLost, ResponseTooLarge, TransportError

_BODY_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError)


def _failure(exc: aiohttp.ClientError | OSError, *, in_tunnel: bool = False) -> TransportError:
    """aiohttp's exception (or a socket's) as the transport's failure. `in_tunnel`: it happened while a
    proxy's tunnel was being set up, where aiohttp reports a proxy that closes or answers garbage as it
    would a provider that does; it is the connect that failed."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        return ConnectFailed("connect timeout", timed_out=True)
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return ConnectFailed(f"the proxy refused the tunnel with a {exc.status}")
    if isinstance(exc, aiohttp.ClientConnectorError) or in_tunnel:
        return ConnectFailed(f"cannot connect ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | OSError):
        return ConnectionLost(f"connection lost before headers ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        if _over_a_header_limit(exc.__cause__):
            return ResponseTooLarge(f"response head over aiohttp's limits ({exc.__cause__})")
        return ConnectionLost(f"malformed response ({type(exc).__name__})")
    return ConnectFailed(f"client error ({type(exc).__name__})")


def _over_a_header_limit(cause: BaseException | None) -> bool:
    """aiohttp's parser refused the head for its size: a line over 8,190 bytes, or over 128 fields.
    (Its client re-raises the parser's LineTooLong or BadHttpMessage as an HttpProcessingError.)"""
    if not isinstance(cause, http_exceptions.HttpProcessingError):
        return False
    message = cause.message or ""
    return message.startswith("Got more than") or message.startswith("Too many headers")


class _AiohttpTarget:
    __slots__ = ("connect_timeout", "headers", "limit", "proxy", "proxy_headers", "ssl", "url")

    def __init__(self, provider: Provider) -> None:
        self.url = URL(provider.chat_url)
        self.headers = provider_headers(provider)
        self.connect_timeout = aiohttp.ClientTimeout(total=None, sock_connect=provider.timeouts.connect_s)
        self.limit = provider.max_response_bytes
        # aiohttp keys its pooled connections by these too: no connection is shared across settings.
        self.ssl: ssl.SSLContext | bool = provider.tls.ssl_context() if provider.tls != TlsSettings() else True
        proxy = provider.proxy
        self.proxy = URL(proxy.url) if proxy is not None else None
        # The proxy's credentials: aiohttp sends `proxy_headers` on a CONNECT only; an http provider's
        # request, which the proxy forwards, carries them itself.
        self.proxy_headers: dict[str, str] | None = None
        if proxy is not None and proxy.authorization is not None:
            if self.url.scheme == "https":
                self.proxy_headers = {"Proxy-Authorization": proxy.authorization}
            else:
                self.headers["Proxy-Authorization"] = proxy.authorization


class _AiohttpBody:
    """aiohttp's ClientResponse seen through the `Body` interface, at most `limit` bytes of it."""

    __slots__ = ("_left", "_limit", "_response", "headers", "resent", "status")

    def __init__(self, response: aiohttp.ClientResponse, limit: int, resent: bool) -> None:
        self._response = response
        self.resent = resent
        self._limit = limit
        self._left = limit
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def readany(self) -> bytes:
        try:
            data = await self._response.content.readany()
        except _BODY_ERRORS as exc:
            raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from exc
        self._left -= len(data)
        if self._left < 0:
            self._response.close()
            raise ResponseTooLarge(f"response body over max_response_bytes ({self._limit})")
        return data

    async def read(self) -> bytes:
        # Piece by piece rather than aiohttp's read(), which would hold a decompression bomb whole.
        parts = []
        while data := await self.readany():
            parts.append(data)
        return b"".join(parts)

    def at_eof(self) -> bool:
        return self._response.content.at_eof()

    def ready(self) -> bool:
        return self._response.content.at_eof()

    def release(self) -> None:
        self._response.release()

    def finish(self) -> None:
        # aiohttp cannot drain in the background: a response released before its end closes.
        self._response.close()

    def close(self) -> None:
        self._response.close()


class _Trace:
    """Per request, set by aiohttp's tracing: whether it went out on a pooled connection, and whether a
    new connection was made (through a proxy: the tunnel and the TLS handshake too)."""

    __slots__ = ("connected", "reused")

    def __init__(self) -> None:
        self.reused = False
        self.connected = False


async def _on_reuse(session: aiohttp.ClientSession, context: object,
                    params: aiohttp.TraceConnectionReuseconnParams) -> None:
    trace = getattr(context, "trace_request_ctx", None)
    if isinstance(trace, _Trace):
        trace.reused = True


async def _on_connected(session: aiohttp.ClientSession, context: object,
                        params: aiohttp.TraceConnectionCreateEndParams) -> None:
    trace = getattr(context, "trace_request_ctx", None)
    if isinstance(trace, _Trace):
        trace.connected = True


def _tracing() -> aiohttp.TraceConfig:
    tracing = aiohttp.TraceConfig()
    tracing.on_connection_reuseconn.append(_on_reuse)
    tracing.on_connection_create_end.append(_on_connected)
    return tracing


_STALE = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class AiohttpClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._fresh: aiohttp.ClientSession | None = None  # new connections only: the retry after a stale one
        self._closed = False

    def prepare(self, provider: Provider) -> _AiohttpTarget:
        return _AiohttpTarget(provider)

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RouterError("router is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  timeout=aiohttp.ClientTimeout(total=None),
                                                  trace_configs=[_tracing()])
        return self._session

    def _fresh_session(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                                                auto_decompress=True, timeout=aiohttp.ClientTimeout(total=None),
                                                trace_configs=[_tracing()])
        return self._fresh

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float, traceparent: str | None = None) -> _AiohttpBody:
        assert isinstance(prepared, _AiohttpTarget)
        session = self._get_session()
        headers = prepared.headers.copy()
        headers["X-Request-ID"] = request_id
        if traceparent is not None:
            headers["traceparent"] = traceparent
        if stream:
            headers["Accept"] = STREAM_ACCEPT
        timeout = prepared.connect_timeout
        if connect_s < (timeout.sock_connect or 0.0):  # the deadline is nearer than the provider's limit
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=max(connect_s, 1e-3))
        trace = _Trace()
        resent = False
        try:
            try:
                response = await session.post(prepared.url, data=body, headers=headers, allow_redirects=False,
                                              timeout=timeout, trace_request_ctx=trace, ssl=prepared.ssl,
                                              proxy=prepared.proxy, proxy_headers=prepared.proxy_headers)
            except _STALE:
                if not trace.reused:
                    raise
                # The provider closed the kept-alive connection while it was idle: once more, on a new one.
                resent = True
                trace = _Trace()
                response = await self._fresh_session().post(
                    prepared.url, data=body, headers=headers, allow_redirects=False, timeout=timeout,
                    trace_request_ctx=trace, ssl=prepared.ssl, proxy=prepared.proxy,
                    proxy_headers=prepared.proxy_headers)
        except (aiohttp.ClientError, OSError) as exc:
            if isinstance(exc, TimeoutError) and not isinstance(exc, aiohttp.ConnectionTimeoutError):
                raise  # a timer fired: the transport knows which
            failure = _failure(exc, in_tunnel=prepared.proxy is not None and not (trace.connected or trace.reused))
            failure.resent = resent
            raise failure from (exc if isinstance(failure, ConnectFailed) and not failure.timed_out else None)
        return _AiohttpBody(response, prepared.limit, resent)

    async def aclose(self) -> None:
        self._closed = True
        for session in (self._session, self._fresh):
            if session is not None:
                await session.close()
        self._session = self._fresh = None
