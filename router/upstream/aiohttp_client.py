"""`http_client: aiohttp`: aiohttp's ClientSession, for a provider the lean client does not get along with.

aiohttp's exceptions are translated into the transport's own failures here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp
from yarl import URL

from router.errors import RouterError
from router.policy.model import Provider
from router.upstream.client import KEEPALIVE_S, STREAM_ACCEPT, provider_headers
from router.upstream.errors import BodyCut, ConnectFailed, ConnectionLost

_BODY_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, OSError)


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
        try:
            return await self._response.content.readany()
        except _BODY_ERRORS as exc:
            raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from exc

    async def read(self) -> bytes:
        try:
            return await self._response.read()
        except _BODY_ERRORS as exc:
            raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from exc

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
            headers["Accept"] = STREAM_ACCEPT
        timeout = prepared.connect_timeout
        if connect_s < (timeout.sock_connect or 0.0):  # the deadline is nearer than the provider's limit
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=max(connect_s, 1e-3))
        try:
            response = await session.post(prepared.url, data=body, headers=headers, allow_redirects=False,
                                          timeout=timeout)
        except aiohttp.ConnectionTimeoutError:
            raise ConnectFailed("connect timeout", timed_out=True) from None
        except TimeoutError:
            raise  # a timer fired: the transport knows which
        except aiohttp.ClientConnectorError as exc:
            raise ConnectFailed(f"cannot connect ({type(exc).__name__})") from exc
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError, OSError) as exc:
            raise ConnectionLost(f"connection lost before headers ({type(exc).__name__})") from None
        except (aiohttp.ClientResponseError, aiohttp.ClientPayloadError) as exc:
            raise ConnectionLost(f"malformed response ({type(exc).__name__})") from None
        except aiohttp.ClientError as exc:
            raise ConnectFailed(f"client error ({type(exc).__name__})") from None
        return _AiohttpBody(response)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None
