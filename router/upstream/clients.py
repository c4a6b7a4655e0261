"""The two HTTP clients the transport can send an attempt with, behind one small interface.

- `FastClient` (default, `http_client: fast`): router/upstream/http1.py, keep-alive pools over
  asyncio with pre-built request heads. About a fifth of aiohttp's CPU per request.
- `AiohttpClient` (`http_client: aiohttp`): aiohttp's ClientSession, for a provider the
  lean client does not get along with.

Both send exactly the same headers: the provider's config (Bearer key, extra headers),
`X-Request-ID`, `Accept`; nothing a client sent. Neither follows redirects.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from router._version import __version__ as _version
from router.errors import RouterError
from router.policy.model import Provider
from router.upstream import http1

USER_AGENT = f"llm-router/{_version}"
# aiohttp closes idle pooled connections on a sweep that runs every keepalive_timeout, so one lives
# between 1x and 2x this (+1 s rounding) after its last use: 20 s keeps that under a minute.
# The fast client sweeps the same way.
KEEPALIVE_S = 20.0
_STREAM_ACCEPT = "text/event-stream"
_ACCEPT_LINES = {True: b"Accept: text/event-stream\r\n", False: b"Accept: */*\r\n"}  # built once, not per request


class Body(Protocol):
    """A response whose head has arrived; the body is read through it."""

    status: int
    headers: Mapping[str, str]

    async def readany(self) -> bytes: ...
    async def read(self) -> bytes: ...
    def at_eof(self) -> bool: ...
    def release(self) -> None: ...
    def finish(self) -> None: ...  # done before the body ended: reuse the connection if the rest comes soon
    def close(self) -> None: ...


class Client(Protocol):
    def prepare(self, provider: Provider) -> object: ...

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float) -> Body: ...

    async def aclose(self) -> None: ...


def provider_headers(provider: Provider) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **provider.headers}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    return headers


class _FastTarget:
    __slots__ = ("head", "pool")

    def __init__(self, pool: http1.Pool, head: bytes) -> None:
        self.pool = pool
        self.head = head


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
        return _FastTarget(pool, http1.request_head("POST", url.raw_path_qs, host_header, headers.items()))

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float) -> http1.Connection:
        assert isinstance(prepared, _FastTarget)
        connection = await prepared.pool.acquire(connect_s)
        head = b"%bX-Request-ID: %b\r\n%bContent-Length: %d\r\n\r\n" % (
            prepared.head, request_id.encode(), _ACCEPT_LINES[stream], len(body))
        try:
            await connection.send(head, body, asyncio.get_running_loop())
        except BaseException:
            connection.close()
            raise
        return connection

    async def aclose(self) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.close()


class _AiohttpTarget:
    __slots__ = ("connect_timeout", "headers", "url")

    def __init__(self, url: URL, headers: dict[str, str], connect_timeout: aiohttp.ClientTimeout) -> None:
        self.url = url
        self.headers = headers
        self.connect_timeout = connect_timeout


class _AiohttpBody:
    """aiohttp's ClientResponse seen through the `Body` interface."""

    __slots__ = ("_response", "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def readany(self) -> bytes:
        return await self._response.content.readany()

    async def read(self) -> bytes:
        return await self._response.read()

    def at_eof(self) -> bool:
        return self._response.content.at_eof()

    def release(self) -> None:
        self._response.release()

    def finish(self) -> None:
        # aiohttp cannot drain in the background: a response released before its end closes.
        self._response.close()

    def close(self) -> None:
        self._response.close()


class AiohttpClient:
    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def prepare(self, provider: Provider) -> _AiohttpTarget:
        return _AiohttpTarget(URL(provider.chat_url), provider_headers(provider),
                              aiohttp.ClientTimeout(total=None, sock_connect=provider.timeouts.connect_s))

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RouterError("router is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float) -> _AiohttpBody:
        assert isinstance(prepared, _AiohttpTarget)
        session = self._get_session()
        headers = prepared.headers.copy()
        headers["X-Request-ID"] = request_id
        if stream:
            headers["Accept"] = _STREAM_ACCEPT
        timeout = prepared.connect_timeout
        if connect_s < (timeout.sock_connect or 0.0):  # the deadline is nearer than the provider's limit
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=max(connect_s, 1e-3))
        response = await session.post(prepared.url, data=body, headers=headers, allow_redirects=False,
                                      timeout=timeout)
        return _AiohttpBody(response)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
