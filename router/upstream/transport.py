"""HTTP to providers: per-try timeouts, connection slots, scrubbing, no surprises.

- The bytes travel through one of two clients (client.py): the lean HTTP/1.1
  client by default, aiohttp's ClientSession for `http_client: aiohttp`;
  either keeps a keep-alive pool for the router's lifetime.
- Per try: connect (incl. waiting for a pool slot), first byte (until headers),
  idle (between body/stream reads); each capped by the request's remaining
  deadline, and a timeout that the deadline caused is marked as such.
- Headers are built from the provider's config only: Bearer key from its env
  var, extra headers, `X-Request-ID`. Nothing the client sent (its credentials,
  cookies, hop-by-hop headers) is ever forwarded. Redirects are not followed.
- What a provider sends back is scrubbed of our key (and of custom header values):
  a provider that echoes them in an error message, a body or a stream event gets
  them replaced by `[redacted]`, so they cannot travel on to a caller or a log.
- Each client raises the transport's failures (errors.py) for its own library's
  exceptions; this module adds the timeouts and imports neither client's library.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from router.clock import Clock, SystemClock
from router.errors import RouterError
from router.policy.model import Provider
from router.upstream.aiohttp_client import AiohttpClient
from router.upstream.client import Body, Client
from router.upstream.errors import (
    BodyCut,
    ConnectFailed,
    FirstByteTimeout,
    IdleTimeout,
    ResponseTooLarge,
    TransportError,
)
from router.upstream.fast_client import FastClient
from router.upstream.sse import DONE_EVENT, SseEvent, SseParser, SseRun, SseTooLarge, one_by_one

REDACTED = b"[redacted]"
# Shorter header values are not scrubbed: replacing a 2-character value everywhere would mangle
# answers, and keys are far longer.
MIN_SECRET_BYTES = 8


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One upstream attempt, fully built: nothing is mutated after this point."""

    provider: Provider
    body: bytes
    request_id: str
    stream: bool
    deadline: float  # monotonic
    traceparent: str | None = None  # the attempt's span, with tracing on (W3C Trace Context; ours, never a client's)


class Reply(Protocol):
    status: int
    headers: Mapping[str, str]
    # The request went out twice: its kept-alive connection died before any byte of the answer, so it
    # was sent once more on a fresh one, within the attempt (a transport without that may omit it).
    resent: bool

    async def read(self) -> bytes: ...
    def batches(self) -> AsyncIterator[list[SseEvent]]: ...  # a stream's events, a list per upstream read
    # (with `aclose()`: the engine closes it once done with the stream)
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
    __slots__ = ("_body", "_clock", "_closed", "_deadline", "_done", "_idle_s", "_release", "_response",
                 "_secrets", "_within", "headers", "resent", "status")

    def __init__(self, response: Body, outgoing: Outgoing, clock: Clock,
                 release: asyncio.Semaphore, body: bytes | None = None, secrets: tuple[bytes, ...] = ()) -> None:
        self._response = response
        self._secrets = secrets
        self._body = body  # already read by send() for non-streamed requests
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers
        self.resent = response.resent
        # The lean client's reads take their idle limit themselves (http1.Response.readany_within).
        self._within = getattr(response, "readany_within", None)
        self._idle_s = outgoing.provider.timeouts.idle_s
        self._deadline = outgoing.deadline
        self._clock = clock
        self._release = release
        self._closed = False
        self._done = False  # the stream's [DONE] arrived: whatever follows is only the body's framing

    async def _read_chunk(self) -> bytes:
        response = self._response
        if response.ready():  # there already: no timer to arm and cancel
            return await response.readany()
        limit, bound = _cap(self._idle_s, self._deadline, self._clock.monotonic())
        within = self._within
        if within is not None:  # the lean client's one timer per response
            try:
                return await within(limit)
            except TimeoutError:
                raise IdleTimeout(f"no data for {limit:.3g}s", deadline_bound=bound) from None
        try:
            async with asyncio.timeout(limit):
                return await self._response.readany()
        except TimeoutError:
            raise IdleTimeout(f"no data for {limit:.3g}s", deadline_bound=bound) from None

    async def read(self) -> bytes:
        """The whole body; no gap between two of its reads may exceed `idle_s` (capped by the deadline)."""
        if self._body is not None:
            self.close()
            return self._body
        try:
            parts = []
            while chunk := await self._read_chunk():
                parts.append(chunk)
            return _scrub(b"".join(parts), self._secrets)
        finally:
            self.close()

    def batches(self) -> _Batches:
        """The stream's events, one list per read that completed any (close with `aclose()`)."""
        return _Batches(self)

    def events(self) -> AsyncIterator[SseEvent]:
        """The stream's events one by one (the engine reads `batches()`; this is for tests and tools)."""
        return one_by_one(self.batches())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # A fully read response goes back to the keep-alive pool, and so does a stream closed after its
        # [DONE] once the chunked terminator follows; any other partial one is closed.
        if self._response.at_eof():
            self._response.release()
        elif self._done:
            self._response.finish()
        else:
            self._response.close()
        self._release.release()


class _Batches:
    """`_HttpReply.batches()`: a plain async iterator rather than an async generator, which the event loop
    tracks (a weak set entry each) and finalizes through its self-pipe when left unfinished."""

    __slots__ = ("_ended", "_parser", "_reply")

    def __init__(self, reply: _HttpReply) -> None:
        self._reply = reply
        self._parser = SseParser(runs=True)
        self._ended = False

    def __aiter__(self) -> _Batches:
        return self

    async def __anext__(self) -> list[SseEvent | SseRun]:
        if self._ended:
            raise StopAsyncIteration
        reply, parser = self._reply, self._parser
        try:
            while True:
                chunk = await reply._read_chunk()
                if not chunk:
                    if parser.finish():
                        raise BodyCut("stream ended inside an event")
                    raise StopAsyncIteration
                events = parser.feed(chunk)
                if events:
                    break
        except SseTooLarge as exc:  # a provider's fault, like any other answer over a limit: fail over
            self._ended = True
            reply.close()
            raise ResponseTooLarge(str(exc)) from None
        except BaseException:
            self._ended = True
            reply.close()
            raise
        secrets = reply._secrets
        if secrets:
            final = events[-1]
            if final.__class__ is SseRun and any(secret in final.raw for secret in secrets):
                events = [*events[:-1], *final.events()]  # type: ignore[union-attr]  # scrubbed one by one
            events = [_scrub_event(event, secrets) if any(secret in event.raw for secret in secrets)  # type: ignore[arg-type]
                      else event for event in events]
        # [DONE] ends the stream (the connection may be reused once its terminator follows): as the last event
        # of the read, where it comes; one inside a run, with events after it, is not looked for.
        final = events[-1]
        if final.__class__ is SseRun:
            if final.raw.endswith(DONE_EVENT) or (len(events) > 1 and any(event.is_done for event in events[:-1])):  # type: ignore[union-attr]
                reply._done = True
        elif final.data == "[DONE]" or (len(events) > 1 and any(event.is_done for event in events)):  # type: ignore[union-attr]
            reply._done = True
        return events

    async def aclose(self) -> None:
        self._ended = True
        self._reply.close()

    def __del__(self) -> None:
        if not self._ended:  # dropped unfinished: the connection and its slot still go back
            self._reply.close()


@dataclass(slots=True)
class _Endpoint:
    """Per-provider things built once, not per request (the client's request template, the secrets)."""

    provider: Provider
    slot: asyncio.Semaphore  # max_connections
    client: Client
    prepared: object  # the client's request template for this provider
    secrets: tuple[bytes, ...]  # scrubbed from what the provider sends back

    @classmethod
    def build(cls, provider: Provider, client: Client, slot: asyncio.Semaphore | None = None) -> _Endpoint:
        secrets = (provider.api_key or "", *provider.headers.values())
        return cls(provider=provider, slot=slot or asyncio.Semaphore(provider.max_connections), client=client,
                   prepared=client.prepare(provider),
                   # Longest first, so a secret that contains another is replaced whole.
                   secrets=tuple(sorted({value.encode() for value in secrets
                                         if len(value.encode()) >= MIN_SECRET_BYTES}, key=len, reverse=True)))


class HttpTransport:
    """The production transport. Create inside a running event loop; close with `aclose()`."""

    def __init__(self, providers: Mapping[str, Provider], *, clock: Clock | None = None,
                 clients: Mapping[str, Client] | None = None) -> None:
        """`clients`: the HTTP client for each `http_client` value (default: the real ones; `router simulate`
        passes its simulated one for both)."""
        self._clock = clock or SystemClock()
        self._clients: dict[str, Client] = dict(clients) if clients is not None \
            else {"fast": FastClient(), "aiohttp": AiohttpClient()}
        self._closed = False
        self._endpoints: dict[str, _Endpoint] = {}
        self.configure(providers)

    def configure(self, providers: Mapping[str, Provider]) -> None:
        """Adopt a new policy's providers; connection slots of providers whose pool size is unchanged survive."""
        endpoints: dict[str, _Endpoint] = {}
        for name, provider in providers.items():
            kept = self._endpoints.get(name)
            same_pool = kept is not None and kept.provider.max_connections == provider.max_connections
            endpoints[name] = _Endpoint.build(provider, self._clients[provider.http_client],
                                              kept.slot if kept and same_pool else None)
        self._endpoints = endpoints

    def _endpoint(self, provider: Provider) -> _Endpoint:
        if self._closed:
            # A request in flight when the router closed would otherwise open a fresh connection for
            # its next attempt and keep sending after close.
            raise RouterError("router is closed")
        endpoint = self._endpoints.get(provider.name)
        if endpoint is None or endpoint.provider is not provider:
            # A request still in flight on the snapshot before a reload may name a provider the new
            # policy removed or changed: it gets an endpoint of its own.
            endpoint = _Endpoint.build(provider, self._clients[provider.http_client],
                                       endpoint.slot if endpoint else None)
        return endpoint

    async def send(self, outgoing: Outgoing) -> _HttpReply:
        provider = outgoing.provider
        timeouts = provider.timeouts
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
        first_byte_s, first_bound = _cap(timeouts.first_byte_s, outgoing.deadline, self._clock.monotonic())
        window = asyncio.timeout(first_byte_s)
        response: Body | None = None
        body: bytes | None = None
        reading = False
        try:
            async with window:
                response = await endpoint.client.post(endpoint.prepared, outgoing.body, outgoing.request_id,
                                                      outgoing.stream, max(connect_s, 1e-3), outgoing.traceparent)
                if not outgoing.stream:
                    # A non-streamed body is read under the same timer (one timer per attempt instead of
                    # two), moved on by `idle_s` after each piece: the longest gap, not the whole read.
                    reading = True
                    idle_s, idle_bound = first_byte_s, first_bound  # until a read waits
                    parts = []
                    loop_time, monotonic = asyncio.get_running_loop().time, self._clock.monotonic
                    while True:
                        if not response.ready():  # moved only when a read will wait (most answers are whole)
                            idle_s, idle_bound = _cap(timeouts.idle_s, outgoing.deadline, monotonic())
                            window.reschedule(loop_time() + idle_s)
                        piece = await response.readany()
                        if not piece:
                            break
                        parts.append(piece)
                    body = _scrub(parts[0] if len(parts) == 1 else b"".join(parts), endpoint.secrets)
        except BaseException as exc:
            slot.release()
            if response is not None:
                response.close()
            if isinstance(exc, TimeoutError) and not isinstance(exc, TransportError):
                if reading:
                    raise IdleTimeout(f"body not complete within {idle_s:.3g}s", deadline_bound=idle_bound) from None
                raise FirstByteTimeout(f"no response headers within {first_byte_s:.3g}s",
                                       deadline_bound=first_bound) from None
            if isinstance(exc, ConnectFailed) and exc.timed_out and connect_bound:
                raise ConnectFailed(str(exc), deadline_bound=True, timed_out=True) from None
            raise
        return _HttpReply(response, outgoing, self._clock, slot, body, endpoint.secrets)

    async def aclose(self) -> None:
        self._closed = True
        for client in self._clients.values():
            await client.aclose()


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
