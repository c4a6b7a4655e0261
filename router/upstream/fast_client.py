"""`http_client: fast` (the default): the lean HTTP/1.1 client of http1/, with pre-built request heads.

About a fifth of aiohttp's CPU per request (bench/README.md). http1 raises the transport's
own failures, so there is nothing to translate here.
"""

from __future__ import annotations

import asyncio
import ssl

from yarl import URL

from router.policy.model import Provider, TlsSettings
from router.upstream import http1
from router.upstream.client import KEEPALIVE_S, provider_headers
from router.upstream.errors import StaleConnection, TransportError

_ACCEPT_LINES = {True: b"Accept: text/event-stream\r\n", False: b"Accept: */*\r\n"}  # built once, not per request


class _FastTarget:
    __slots__ = ("head", "limit", "pool")

    def __init__(self, pool: http1.Pool, head: bytes, limit: int) -> None:
        self.pool = pool
        self.head = head
        self.limit = limit


class FastClient:
    """Pools per origin survive policy reloads, so a changed key or header keeps the warm connections.
    An origin is the scheme, host and port, with the TLS settings and the proxy: two providers at one
    host with different client certificates never share a connection."""

    def __init__(self) -> None:
        self._pools: dict[tuple[object, ...], http1.Pool] = {}
        self._default_tls: ssl.SSLContext | None = None

    def _tls(self, settings: TlsSettings) -> ssl.SSLContext:
        if settings != TlsSettings():
            return settings.ssl_context()  # read again on each reload: a renewed certificate is picked up
        if self._default_tls is None:
            self._default_tls = ssl.create_default_context()
        return self._default_tls

    def prepare(self, provider: Provider) -> _FastTarget:
        url = URL(provider.chat_url)
        host, port, scheme = url.raw_host or "", url.port or 80, url.scheme
        proxy = provider.proxy
        tls = self._tls(provider.tls) if scheme == "https" else None
        origin = (scheme, host, port, provider.tls if tls is not None else None, proxy)
        pool = self._pools.get(origin)
        if pool is None:
            if proxy is not None and tls is None:  # http through a proxy: the proxy is the connection's peer
                pool = http1.Pool(proxy.host, proxy.port, tls=None, keepalive_s=KEEPALIVE_S)
            else:
                pool = http1.Pool(host, port, tls=tls, keepalive_s=KEEPALIVE_S, tunnel=proxy)
            self._pools[origin] = pool
        elif tls is not None:
            pool.tls = tls
        host_header = f"[{host}]" if ":" in host else host
        if not url.is_default_port():
            host_header += f":{port}"
        headers = {**provider_headers(provider), "Accept-Encoding": "gzip, deflate"}
        target = url.raw_path_qs
        if proxy is not None and tls is None:
            target = str(url)  # the absolute form, which a proxy forwards (RFC 9112, section 3.2.2)
            if proxy.authorization is not None:
                headers["Proxy-Authorization"] = proxy.authorization
        return _FastTarget(pool, http1.request_head("POST", target, host_header, headers.items()),
                           provider.max_response_bytes)

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float, traceparent: str | None = None) -> http1.Response:
        assert isinstance(prepared, _FastTarget)
        head = b"%bX-Request-ID: %b\r\n%bContent-Length: %d\r\n\r\n" % (
            prepared.head, request_id.encode(), _ACCEPT_LINES[stream], len(body))
        if traceparent is not None:  # built by OpenTelemetry's propagator from our own span: hex and dashes
            head = head[:-2] + b"traceparent: %b\r\n\r\n" % traceparent.encode("ascii")
        loop = asyncio.get_running_loop()
        connection = await prepared.pool.acquire(connect_s)
        try:
            return await connection.send(head, body, loop, prepared.limit)
        except StaleConnection:
            pass  # the provider closed it while idle, before reading the request: once more, on a new one
        except BaseException:
            connection.close()
            raise
        try:
            connection = await prepared.pool.acquire(connect_s, fresh=True)
            try:
                response = await connection.send(head, body, loop, prepared.limit)
            except BaseException:
                connection.close()
                raise
        except TransportError as exc:
            exc.resent = True
            raise
        response.resent = True
        return response

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()
