"""`http_client: fast` (the default): the lean HTTP/1.1 client of http1/, with pre-built request heads.

About a fifth of aiohttp's CPU per request (bench/README.md). http1 raises the transport's
own failures, so there is nothing to translate here.
"""

from __future__ import annotations

import asyncio
import ssl

from yarl import URL

from router.policy.model import Provider
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
    """Pools per origin survive policy reloads, so a changed key or header keeps the warm connections."""

    def __init__(self) -> None:
        self._pools: dict[tuple[str, str, int], http1.Pool] = {}
        self._tls: ssl.SSLContext | None = None

    def prepare(self, provider: Provider) -> _FastTarget:
        url = URL(provider.chat_url)
        host, port, scheme = url.raw_host or "", url.port or 80, url.scheme
        origin = (scheme, host, port)
        pool = self._pools.get(origin)
        if pool is None:
            tls = None
            if scheme == "https":
                if self._tls is None:
                    self._tls = ssl.create_default_context()
                tls = self._tls
            pool = self._pools[origin] = http1.Pool(host, port, tls=tls, keepalive_s=KEEPALIVE_S)
        host_header = f"[{host}]" if ":" in host else host
        if not url.is_default_port():
            host_header += f":{port}"
        headers = {**provider_headers(provider), "Accept-Encoding": "gzip, deflate"}
        return _FastTarget(pool, http1.request_head("POST", url.raw_path_qs, host_header, headers.items()),
                           provider.max_response_bytes)

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float) -> http1.Response:
        assert isinstance(prepared, _FastTarget)
        head = b"%bX-Request-ID: %b\r\n%bContent-Length: %d\r\n\r\n" % (
            prepared.head, request_id.encode(), _ACCEPT_LINES[stream], len(body))
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
