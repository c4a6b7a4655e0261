"""What the transport asks of an HTTP client, and what both clients send.

Two clients implement it: `FastClient` (fast_client.py, the default `http_client: fast`)
and `AiohttpClient` (aiohttp_client.py, `http_client: aiohttp`). Each raises the
transport's own failures (errors.py) for its library's exceptions; the transport adds the
timeouts and never sees a library type.

Both send exactly the same headers: the provider's config (Bearer key, extra headers),
`X-Request-ID`, `Accept`; nothing a client of the router sent. Neither follows redirects.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from router._version import __version__ as _version
from router.policy.model import Provider

USER_AGENT = f"llm-router/{_version}"
# aiohttp closes idle pooled connections on a sweep that runs every keepalive_timeout, so one lives
# between 1x and 2x this (+1 s rounding) after its last use: 20 s keeps that under a minute.
# The fast client sweeps the same way.
KEEPALIVE_S = 20.0
STREAM_ACCEPT = "text/event-stream"


class Body(Protocol):
    """An answer whose head has arrived; the body is read through it.

    `readany` and `read` raise `BodyCut` when the body breaks off."""

    status: int
    headers: Mapping[str, str]
    resent: bool  # the request went out twice: a kept-alive connection died first (StaleConnection)

    async def readany(self) -> bytes: ...
    async def read(self) -> bytes: ...
    def at_eof(self) -> bool: ...
    def ready(self) -> bool: ...  # readany() would return without waiting
    def release(self) -> None: ...  # read to its end: the connection may be reused
    def finish(self) -> None: ...  # done before the body ended: reuse the connection if the rest comes soon
    def close(self) -> None: ...


class Client(Protocol):
    def prepare(self, provider: Provider) -> object:
        """What the client builds once per provider (a request template, a pool)."""
        ...

    async def post(self, prepared: object, body: bytes, request_id: str, stream: bool,
                   connect_s: float, traceparent: str | None = None) -> Body:
        """Send and wait for the answer's head. Raises ConnectFailed (`timed_out` for a connect
        timeout) or ConnectionLost (with `resent` set when it went out twice)."""
        ...

    async def aclose(self) -> None: ...


def provider_headers(provider: Provider) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **provider.headers}
    if provider.api_key:
        headers["Authorization"] = f"Bearer {provider.api_key}"
    return headers
