"""HTTP to providers: one shared aiohttp session per router, per-try timeouts, no surprises.

- One `ClientSession` with a keep-alive pool for the router's lifetime.
- Per try: connect (incl. waiting for a pool slot), first byte (until headers),
  idle (between body/stream reads); each capped by the request's remaining
  deadline, and a timeout that the deadline caused is marked as such.
- Headers are built from the provider's config only: Bearer key from its env
  var, extra headers, `X-Request-ID`. Nothing the client sent (its credentials,
  cookies, hop-by-hop headers) is ever forwarded. Redirects are not followed.
- What a provider sends back is scrubbed of our key (and of custom header values):
  a provider that echoes them in an error message, a body or a stream event gets
  them replaced by `[redacted]`, so they cannot travel on to a caller or a log.
- aiohttp exceptions are translated into `transport_errors` here and nowhere else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from yarl import URL

from router._version import __version__ as _version
from router.clock import Clock, SystemClock
from router.errors import RouterError
from router.policy.model import Provider
from router.sse import SseEvent, SseParser
from router.transport_errors import (
    BodyCut,
    ConnectFailed,
    ConnectionLost,
    FirstByteTimeout,
    IdleTimeout,
)

USER_AGENT = f"llm-router/{_version}"
REDACTED = b"[redacted]"
# Shorter header values are not scrubbed: replacing a 2-character value everywhere would mangle
# answers, and keys are far longer.
MIN_SECRET_BYTES = 8
# aiohttp closes idle pooled connections on a sweep that runs every keepalive_timeout, so one lives
# between 1x and 2x this (+1 s rounding) after its last use: 20 s keeps that under a minute.
KEEPALIVE_S = 20.0
_READ_ERRORS = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, ConnectionError)


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One upstream attempt, fully built: nothing is mutated after this point."""

    provider: Provider
    body: bytes
    request_id: str
    stream: bool
    deadline: float  # monotonic


class Reply(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...
    def events(self) -> AsyncIterator[SseEvent]: ...
    def close(self) -> None: ...


class Transport(Protocol):
    async def send(self, outgoing: Outgoing) -> Reply: ...
    async def aclose(self) -> None: ...


def _cap(configured: float, deadline: float, now: float) -> tuple[float, bool]:
    remaining = deadline - now
    if remaining < configured:
        return max(remaining, 0.0), True
    return configured, False


class _HttpReply:
    __slots__ = ("_body", "_clock", "_closed", "_deadline", "_idle_s", "_release", "_response", "_secrets",
                 "headers", "status")

    def __init__(self, response: aiohttp.ClientResponse, outgoing: Outgoing, clock: Clock,
                 release: asyncio.Semaphore, body: bytes | None = None, secrets: tuple[bytes, ...] = ()) -> None:
        self._response = response
        self._secrets = secrets
        self._body = body  # already read by send() for non-streamed requests
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self._idle_s = outgoing.provider.timeouts.idle_s
        self._deadline = outgoing.deadline
        self._clock = clock
        self._release = release
        self._closed = False

    async def _read_chunk(self) -> bytes:
        limit, bound = _cap(self._idle_s, self._deadline, self._clock.monotonic())
        try:
            async with asyncio.timeout(limit):
                return await self._response.content.readany()
        except TimeoutError:
            raise IdleTimeout(f"no data for {limit:.3g}s", deadline_bound=bound) from None
        except _READ_ERRORS as exc:
            raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from None

    async def read(self) -> bytes:
        """The whole body, which must arrive within `idle_s` (capped by the deadline).

        One timeout for the whole read rather than one per chunk: non-streamed answers
        come in one piece, and a timer per chunk was a measurable share of the CPU."""
        if self._body is not None:
            self.close()
            return self._body
        limit, bound = _cap(self._idle_s, self._deadline, self._clock.monotonic())
        try:
            async with asyncio.timeout(limit):
                return _scrub(await self._response.read(), self._secrets)
        except TimeoutError:
            raise IdleTimeout(f"body not complete within {limit:.3g}s", deadline_bound=bound) from None
        except _READ_ERRORS as exc:
            raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from None
        finally:
            self.close()

    async def events(self) -> AsyncIterator[SseEvent]:
        parser = SseParser()
        secrets = self._secrets
        try:
            while chunk := await self._read_chunk():
                for event in parser.feed(chunk):
                    if secrets and any(secret in event.raw for secret in secrets):
                        event = _scrub_event(event, secrets)
                    yield event
            if parser.finish():
                raise BodyCut("stream ended inside an event")
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A fully read response goes back to the keep-alive pool; a partial one is closed.
        if self._response.content.at_eof():
            self._response.release()
        else:
            self._response.close()
        self._release.release()


@dataclass(slots=True)
class _Endpoint:
    """Per-provider things built once, not per request (a URL parse, a header dict, a timeout)."""

    provider: Provider
    slot: asyncio.Semaphore  # max_connections
    headers: dict[str, str]
    url: URL
    connect_timeout: aiohttp.ClientTimeout
    secrets: tuple[bytes, ...]  # scrubbed from what the provider sends back

    @classmethod
    def build(cls, provider: Provider, slot: asyncio.Semaphore | None = None) -> _Endpoint:
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **provider.headers}
        if provider.api_key:
            headers["Authorization"] = f"Bearer {provider.api_key}"
        secrets = (provider.api_key or "", *provider.headers.values())
        return cls(provider=provider, slot=slot or asyncio.Semaphore(provider.max_connections), headers=headers,
                   url=URL(provider.chat_url),
                   connect_timeout=aiohttp.ClientTimeout(total=None, sock_connect=provider.timeouts.connect_s),
                   # Longest first, so a secret that contains another is replaced whole.
                   secrets=tuple(sorted({value.encode() for value in secrets
                                         if len(value.encode()) >= MIN_SECRET_BYTES}, key=len, reverse=True)))


class HttpTransport:
    """The production transport. Create inside a running event loop; close with `aclose()`."""

    def __init__(self, providers: Mapping[str, Provider], *, clock: Clock | None = None) -> None:
        self._clock = clock or SystemClock()
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        self._endpoints: dict[str, _Endpoint] = {}
        self.configure(providers)

    def configure(self, providers: Mapping[str, Provider]) -> None:
        """Adopt a new policy's providers; connection slots of providers whose pool size is unchanged survive."""
        endpoints: dict[str, _Endpoint] = {}
        for name, provider in providers.items():
            kept = self._endpoints.get(name)
            same_pool = kept is not None and kept.provider.max_connections == provider.max_connections
            endpoints[name] = _Endpoint.build(provider, kept.slot if kept and same_pool else None)
        self._endpoints = endpoints

    def _get_session(self) -> aiohttp.ClientSession:
        if self._closed:
            # A request in flight when the router closed would otherwise open a fresh session for its
            # next attempt, keep sending after close and leak that session (unclosed connector).
            raise RouterError("router is closed")
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=KEEPALIVE_S,
                                             ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=True,
                                                  timeout=aiohttp.ClientTimeout(total=None))
        return self._session

    def _endpoint(self, provider: Provider) -> _Endpoint:
        endpoint = self._endpoints.get(provider.name)
        if endpoint is None or endpoint.provider is not provider:
            # A request still in flight on the snapshot before a reload may name a provider the new
            # policy removed or changed: it gets an endpoint of its own.
            endpoint = _Endpoint.build(provider, endpoint.slot if endpoint else None)
        return endpoint

    async def send(self, outgoing: Outgoing) -> _HttpReply:
        provider = outgoing.provider
        timeouts = provider.timeouts
        session = self._get_session()
        endpoint = self._endpoint(provider)
        slot = endpoint.slot
        connect_s, connect_bound = _cap(timeouts.connect_s, outgoing.deadline, self._clock.monotonic())
        if slot.locked():
            try:
                async with asyncio.timeout(connect_s):
                    await slot.acquire()
            except TimeoutError:
                raise ConnectFailed("no free connection slot (max_connections)",
                                    deadline_bound=connect_bound) from None
        else:
            await slot.acquire()
        headers = endpoint.headers.copy()
        headers["X-Request-ID"] = outgoing.request_id
        if outgoing.stream:
            headers["Accept"] = "text/event-stream"
        first_byte_s, first_bound = _cap(timeouts.first_byte_s, outgoing.deadline, self._clock.monotonic())
        timeout = endpoint.connect_timeout if not connect_bound \
            else aiohttp.ClientTimeout(total=None, sock_connect=max(connect_s, 1e-3))
        window = asyncio.timeout(first_byte_s)
        response: aiohttp.ClientResponse | None = None
        body: bytes | None = None
        reading = False
        try:
            async with window:
                response = await session.post(endpoint.url, data=outgoing.body, headers=headers,
                                              allow_redirects=False, timeout=timeout)
                if not outgoing.stream:
                    # A non-streamed body is read under the same timer, moved to the idle limit:
                    # one timer per attempt instead of two.
                    idle_s, idle_bound = _cap(timeouts.idle_s, outgoing.deadline, self._clock.monotonic())
                    window.reschedule(asyncio.get_running_loop().time() + idle_s)
                    reading = True
                    body = _scrub(await response.read(), endpoint.secrets)
        except BaseException as exc:
            slot.release()
            if response is not None:
                response.close()
            if reading and isinstance(exc, TimeoutError) and window.expired():
                raise IdleTimeout(f"body not complete within {idle_s:.3g}s", deadline_bound=idle_bound) from None
            if reading and isinstance(exc, _READ_ERRORS):
                raise BodyCut(f"connection lost mid-body ({type(exc).__name__})") from None
            raise _translate(exc, window_expired=window.expired(),
                             connect_bound=connect_bound, first_bound=first_bound,
                             first_byte_s=first_byte_s) from None
        return _HttpReply(response, outgoing, self._clock, slot, body, endpoint.secrets)

    async def aclose(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None


def _scrub(data: bytes, secrets: tuple[bytes, ...]) -> bytes:
    for secret in secrets:
        if secret in data:
            data = data.replace(secret, REDACTED)
    return data


def _scrub_event(event: SseEvent, secrets: tuple[bytes, ...]) -> SseEvent:
    data = event.data
    for secret in secrets:
        data = data.replace(secret.decode("utf-8", "replace"), REDACTED.decode())
    return SseEvent(raw=_scrub(event.raw, secrets), data=data, event=event.event, id=event.id)


def _translate(exc: BaseException, *, window_expired: bool, connect_bound: bool, first_bound: bool,
               first_byte_s: float) -> BaseException:
    if isinstance(exc, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
        return exc
    if isinstance(exc, aiohttp.ConnectionTimeoutError) and not window_expired:
        return ConnectFailed("connect timeout", deadline_bound=connect_bound)
    if isinstance(exc, TimeoutError):
        return FirstByteTimeout(f"no response headers within {first_byte_s:.3g}s", deadline_bound=first_bound)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return ConnectFailed(f"cannot connect ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | ConnectionError):
        return ConnectionLost(f"connection lost before headers ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return ConnectionLost(f"malformed response ({type(exc).__name__})")
    if isinstance(exc, aiohttp.ClientError):
        return ConnectFailed(f"client error ({type(exc).__name__})")
    return exc
