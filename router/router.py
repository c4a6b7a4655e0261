"""`Router`: the library's front door.

    async with Router.from_file("policies/default.yaml") as router:
        reply = await router.chat({"model": "chat", "messages": [...]})
        async with router.stream({"model": "chat", "messages": [...], "stream": True}) as stream:
            async for event in stream:
                ...

Holds one policy snapshot (swapped atomically by `reload`), one transport (one
aiohttp session), one state object and one observer. Nothing is global: two
routers in one process share nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from router.clock import Clock, SystemClock
from router.engine.call import Call, Snapshot
from router.engine.completion import ChatResult, complete
from router.engine.loop import Engine
from router.engine.outcome import SUCCESS, RequestRecord
from router.engine.streaming import ChatStream
from router.errors import InvalidRequest, PolicyError, RateLimited, RouteNotAllowed, RouterError, UnknownRoute
from router.health.backends import HealthReport, MemoryBackend, StateBackend
from router.health.ledger import Ledger
from router.health.prober import Check, HealthProber
from router.health.quota import REQUESTS, TOKENS, UNAVAILABLE
from router.observe.observer import UNKNOWN_ROUTE, NullObserver, Observer
from router.observe.tracing import Tracing
from router.policy import load_policy
from router.policy.model import Client, Policy
from router.request import ChatRequest, parse_chat_request
from router.upstream.probe import ProbeSender
from router.upstream.transport import HttpTransport, Transport

Body = bytes | Mapping[str, Any] | ChatRequest


class Router:
    def __init__(self, policy: Policy, *, observer: Observer | None = None,
                 transport: Transport | None = None, clock: Clock | None = None,
                 rng: random.Random | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None, limit_share: float = 1.0,
                 health_check: Check | None = None, tracing: Tracing | None = None) -> None:
        """`limit_share`: with the memory backend, the fraction of every limit this router enforces
        (1/N when N worker processes serve one policy without Redis). `health_check`: sends one
        `health_probe` (default: upstream/probe.py's, over HTTP). `tracing`: OpenTelemetry spans
        (observe/tracing.py, the `otel` extra); None, the default, is off and costs nothing."""
        self._clock = clock or SystemClock()
        self._observer = observer or NullObserver()
        self._backend = _backend_for(policy, self._observer, self._clock, limit_share)
        self._starting: asyncio.Task[None] | None = None
        self._snapshot = Snapshot.build(policy, backend=self._backend)
        self._own_transport = transport is None
        self._transport = transport or HttpTransport(policy.providers, clock=self._clock)
        self._engine = Engine(transport=self._transport, observer=self._observer, clock=self._clock,
                              rng=rng or random.Random(), sleep=sleep or asyncio.sleep)
        self._closed = False
        self._own_probe = health_check is None
        self._health_check: Check = health_check or ProbeSender()
        self._prober: asyncio.Task[None] | None = None
        self._tracing = tracing
        self._observer.watch_target_latencies(lambda: self._snapshot.ledger.latency_estimates())

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> Router:
        """Load and validate a policy file (raises PolicyError naming the key path)."""
        return cls(load_policy(path), **kwargs)

    @property
    def policy(self) -> Policy:
        return self._snapshot.policy

    @property
    def ledger(self) -> Ledger:
        """The live health and limit state (read by the admin listener; drains go through it)."""
        return self._snapshot.ledger

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def tracing(self) -> Tracing | None:
        return self._tracing

    @property
    def observer(self) -> Observer:
        """The sink of this router's events (a `NullObserver` when none was given)."""
        return self._observer

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def start(self) -> None:
        """Connect the state backend (Redis: load scripts, warm connections, first health sync).
        `async with` and the daemon call it; without it, the first request starts it in the
        background rather than wait (no request waits on Redis longer than `state.timeout_ms`)."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._backend.start(self._adopt_health))
        self._start_prober()
        await asyncio.shield(self._starting)

    def _start_prober(self) -> None:
        """Probe ejected providers out of band, once a provider of the policy has a `health_probe`."""
        if self._prober is not None or self._closed:
            return
        if not any(p.health_probe is not None for p in self._snapshot.policy.providers.values()):
            return
        prober = HealthProber(lambda: (self._snapshot.policy, self._snapshot.ledger), self._health_check,
                              observer=self._observer, clock=self._clock)
        self._prober = asyncio.ensure_future(prober.run())

    def _adopt_health(self, report: HealthReport) -> None:
        for provider, target, state in self._snapshot.ledger.adopt_health(report, self._clock.monotonic()):
            self._observer.breaker_changed(provider, target, state)

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._prober is not None:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
        if self._own_probe:
            await self._health_check.aclose()  # type: ignore[attr-defined]
        if self._starting is not None and not self._starting.done():
            self._starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._starting
        await self._backend.aclose()
        if self._own_transport:
            await self._transport.aclose()

    def reload(self, policy: Policy) -> None:
        """Swap to a new, already validated policy. In-flight requests keep their snapshot;
        breaker and limiter state of unchanged providers and clients carry over. The `state` block
        cannot change without a restart (PolicyError)."""
        if policy.state != self._snapshot.policy.state:
            raise PolicyError("the `state` block cannot change on reload; restart the router to switch it",
                              source=policy.source, path="state")
        snapshot = Snapshot.build(policy, previous=self._snapshot)
        configure = getattr(self._transport, "configure", None)
        if configure is not None:
            configure(policy.providers)
        self._snapshot = snapshot
        if self._starting is not None:
            self._start_prober()

    # -- requests ----------------------------------------------------------------------------
    async def chat(self, body: Body, *, client: str | None = None, request_id: str | None = None,
                   record: RequestRecord | None = None) -> ChatResult:
        """A non-streaming chat completion. Raises RateLimited, NoTargetAvailable, UpstreamError,
        InvalidRequest (UnknownRoute, RouteNotAllowed).

        `record`: a server's record of this request, made when it was received (see `new_record`). A
        failure finishes it here; a success is the server's to finish, once the answer is delivered."""
        delivered_here = record is None
        record = record or self.new_record(client)
        try:
            request = _as_request(body, request_id)
            if request.stream:
                raise InvalidRequest("use stream() for a request with `stream: true`", param="stream")
        except RouterError as exc:
            record.fail(exc)
            raise
        call = await self._admit(request, client, record)
        try:
            result = await complete(self._engine, call)
        except BaseException as exc:
            self._finished(call, exc)
            raise
        if delivered_here:
            self._finished(call, SUCCESS)
        return result

    def stream(self, body: Body, *, client: str | None = None, request_id: str | None = None,
               record: RequestRecord | None = None) -> ChatStream:
        """A streaming chat completion: an async iterator of SSE events (see ChatStream).
        Admission (route, client limits) happens when the stream starts, so errors
        before the commit point are raised by `start()` or the first iteration."""
        record = record or self.new_record(client)
        try:
            request = _as_request(body, request_id, force_stream=True)
        except RouterError as exc:
            record.fail(exc)
            raise
        return ChatStream(self._engine, request, lambda: self._admit(request, client, record), self._finished)

    def new_record(self, client: str | None = None) -> RequestRecord:
        """A record of one request, started now: a server makes it when a request arrives, refuses
        with `record.fail(exc)` or passes it to `chat` / `stream`, and reads the outcome from it."""
        known = self._snapshot.policy.client_named(client) if client is not None else None
        return RequestRecord(self._observer, self._clock, client=known.name if known is not None else "-")

    # -- admission ---------------------------------------------------------------------------
    async def _admit(self, request: ChatRequest, client_name: str | None, record: RequestRecord) -> Call:
        """Resolve the route and the client and take the client's limits. A refusal here (closed,
        unknown route or client, route not allowed, over a limit, cancelled while queued) finishes
        the record; after a successful return, `_finished` must."""
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._backend.start(self._adopt_health))
            self._start_prober()
        snapshot = self._snapshot
        policy = snapshot.policy
        route = policy.find_route(request.model)
        client = policy.client_named(client_name) if client_name is not None else None
        record.admit(route.name if route is not None else UNKNOWN_ROUTE, client.name if client is not None else "-")
        try:
            if self._closed:
                raise RouterError("router is closed")
            if route is None:
                raise UnknownRoute(request.model)
            if client_name is not None:
                if client is None:
                    raise InvalidRequest(f"unknown client `{client_name}`")
                if not client.may_use(route.name):
                    raise RouteNotAllowed(client.name, route.name)
            now = self._clock.monotonic()
            call = Call(snapshot=snapshot, route=route, tiers=snapshot.tiers[route.name], request=request,
                        record=record, deadline=now + route.deadline_s)
            if client is not None:
                await self._take_client_limits(call, client)
        except BaseException as exc:
            record.fail(exc)
            raise
        snapshot.ledger.budget.record_request(now)
        if self._tracing is not None:
            record.span = self._tracing.request(route=route.name, model=request.model, stream=request.stream,
                                                request_id=request.request_id, traceparent=record.traceparent)
        return call

    def _finished(self, call: Call, outcome: str | BaseException) -> None:
        """The request ended: an unsuccessful one gives its client tokens back; the record decides."""
        if outcome != SUCCESS:
            self._release_client_tokens(call)
        if isinstance(outcome, BaseException):
            call.record.fail(outcome)
        else:
            call.record.finish(outcome)

    async def _take_client_limits(self, call: Call, client: Client) -> None:
        quota = call.snapshot.ledger.client(client).quota
        if quota is None:
            return
        max_wait = min(client.limits.queue_s, max(0.0, call.deadline - self._clock.monotonic()))
        estimate = call.request.token_estimate
        wait, kind = await quota.take(estimate, max_wait)
        if wait > 0:
            self._observer.client_rate_limited(client.name, kind)
            raise RateLimited(_LIMIT_MESSAGES[kind].format(client=client.name), retry_after=wait)
        if quota.token_capacity is not None:
            call.tokens_reserved = int(min(estimate, quota.token_capacity))

    def _release_client_tokens(self, call: Call) -> None:
        if not call.tokens_reserved:
            return
        client = call.snapshot.policy.client_named(call.client)
        if client is not None:
            quota = call.snapshot.ledger.client(client).quota
            if quota is not None:
                quota.adjust_tokens(-call.tokens_reserved)
        call.tokens_reserved = 0


_LIMIT_MESSAGES = {
    REQUESTS: "client `{client}` is over its request rate",
    TOKENS: "client `{client}` is over its token rate",
    UNAVAILABLE: "limit state for client `{client}` is unavailable (state.on_error: deny)",
}


def _backend_for(policy: Policy, observer: Observer, clock: Clock, limit_share: float) -> StateBackend:
    if policy.state.backend == "redis":
        from router.health.redis_backend import RedisBackend  # redis is only imported when used

        return RedisBackend(policy.state, observer=observer, clock=clock)
    return MemoryBackend(limit_share)


def _as_request(body: Body, request_id: str | None, *, force_stream: bool = False) -> ChatRequest:
    if isinstance(body, ChatRequest):
        return body
    if force_stream and isinstance(body, Mapping) and not body.get("stream"):
        body = {**body, "stream": True}
    request = parse_chat_request(body, request_id=request_id)
    if force_stream and not request.stream:
        raise InvalidRequest("stream() needs `stream: true` in the body", param="stream")
    return request
