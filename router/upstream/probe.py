"""One health probe of a provider: `GET base_url + path`, or `POST` a small chat body; a 2xx is healthy.

Probes are rare (one per interval per ejected provider), so they go through their own aiohttp
session rather than the request path's pools: a probe never takes a connection slot a client
request is waiting for, and never counts against a limit. The provider's headers (its key
included), TLS settings and proxy apply as for requests; at most `_MAX_BODY` bytes of the answer
are read.
"""

from __future__ import annotations

import json

import aiohttp

from router.policy.model import Provider
from router.upstream.client import provider_headers

_MAX_BODY = 64 * 1024
_MAX_PROBE_S = 30.0


class ProbeSender:
    __slots__ = ("_session",)

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, provider: Provider) -> bool:
        probe = provider.health_probe
        assert probe is not None
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False, auto_decompress=True)
        timeouts = provider.timeouts
        timeout = aiohttp.ClientTimeout(total=min(_MAX_PROBE_S, timeouts.connect_s + timeouts.first_byte_s),
                                        sock_connect=timeouts.connect_s)
        headers = provider_headers(provider)
        proxy = provider.proxy
        options: dict[str, object] = {
            "timeout": timeout, "allow_redirects": False,
            "ssl": provider.tls.ssl_context() if provider.base_url.startswith("https://") else True,
        }
        if proxy is not None:
            options["proxy"] = proxy.url
            if proxy.authorization:
                options["proxy_headers"] = {"Proxy-Authorization": proxy.authorization}
        try:
            if probe.body is not None:
                request = self._session.post(provider.chat_url, data=json.dumps(dict(probe.body)).encode(),
                                             headers=headers, **options)  # type: ignore[arg-type]
            else:
                headers.pop("Content-Type", None)
                request = self._session.get(provider.base_url + probe.path, headers=headers,
                                            **options)  # type: ignore[arg-type]
            async with request as response:
                await response.content.read(_MAX_BODY)
                return 200 <= response.status < 300
        except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
            return False

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
