"""The Redis state backend: quotas and provider health shared by every replica.

- Quotas: one Lua script call per admission decision (`redis_scripts.BUCKETS`),
  on Redis server time, both buckets of a quota or neither. Returning or charging
  tokens is a write in the background: nobody waits for it.
- Health: ejections and throttles are published to one hash and read back by
  every replica every `SYNC_INTERVAL_S` (one call does both), so a provider that
  one replica saw fail is avoided by the others within that interval plus one
  round trip.
- Failure: every call has its own `timeout_ms`. After a failed call the backend
  stops calling Redis for `RETRY_AFTER_ERROR_S` (requests then decide at once, per
  `on_error`) and the sync loop probes until Redis answers again, so a dead Redis
  never costs a request more than one timeout. `on_error: local` enforces this
  replica's share (1/replicas) of each limit in process; `allow` admits; `deny`
  refuses. Each failure counts in `llm_router_state_backend_errors_total`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import NoScriptError, RedisError

from router.clock import Clock
from router.health.backends import ApplyHealth
from router.health.quota import REQUESTS, TOKENS, UNAVAILABLE, MemoryQuota, Quota, QuotaSpec, Rate
from router.health.redis_scripts import BUCKETS, HEALTH
from router.observe.observer import Observer
from router.policy.model import StatePolicy

log = logging.getLogger("router.health.ledger")

SYNC_INTERVAL_S = 0.25
RETRY_AFTER_ERROR_S = 1.0
_MAX_BACKGROUND_WRITES = 1000  # pipelines in flight; beyond this Redis cannot keep up: fail and count
_FAILED = object()
_WARM_CONNECTIONS = 16
_NAME = "redis"
# A bucket call waiting for the next pipeline: operation (for the error metric), keys, args, and the
# future of a decision someone awaits (None for a background write).
_Queued = tuple[str, Sequence[str], Sequence[Any], "asyncio.Future[Any] | None"]


class RedisBackend:
    name = _NAME

    def __init__(self, config: StatePolicy, *, observer: Observer, clock: Clock,
                 sync_interval_s: float = SYNC_INTERVAL_S) -> None:
        assert config.url is not None
        self.config = config
        self._observer = observer
        self.clock = clock
        self._timeout = config.timeout_ms / 1000.0
        self._interval = sync_interval_s
        self._client: Redis = Redis.from_url(
            config.url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 0), health_check_interval=0,
            driver_info=None)  # no CLIENT SETINFO round trips on every new connection
        self.buckets = self._client.register_script(BUCKETS)
        self._health = self._client.register_script(HEALTH)
        self._health_key = config.key_prefix + "health"
        self._down_until = float("-inf")
        self._down = False
        self._pending: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._writes: set[asyncio.Task[Any]] = set()  # pipelines in flight
        self._queue: list[_Queued] = []
        self._sync_task: asyncio.Task[None] | None = None
        self._apply: ApplyHealth | None = None
        self.last_report: list[tuple[str, float]] = []  # the fleet's health as of the last sync (admin state)
        self._closing = False

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self, apply: ApplyHealth) -> None:
        self._apply = apply
        if self._sync_task is None:
            # Load the scripts now, so no request pays for the NOSCRIPT fallback, then learn what the
            # fleet knows before the first request. Failing here is not fatal: on_error applies.
            try:
                async with asyncio.timeout(max(self._timeout, 1.0)):
                    await self._client.script_load(BUCKETS)
                    await self._client.script_load(HEALTH)
                    # New connections are opened one at a time (the pool's lock): open some now, so
                    # a burst of first requests does not queue behind connects and time out.
                    await asyncio.gather(*(self._client.ping() for _ in range(_WARM_CONNECTIONS)))
            except (RedisError, OSError, TimeoutError) as exc:
                self._failed("start", exc)
            await self.sync()
            self._sync_task = asyncio.create_task(self._sync_loop(), name="router-state-sync")

    async def aclose(self) -> None:
        self._closing = True
        self._wake.set()
        tasks = [t for t in (self._sync_task, *self._writes) if t is not None]
        while tasks:  # cancel again if a cancel was lost (see _sync_loop)
            for task in tasks:
                task.cancel()
            _, pending = await asyncio.wait(tasks, timeout=0.5)
            tasks = list(pending)
        self._sync_task = None
        try:
            await self._client.aclose()
        except (RedisError, OSError, TimeoutError) as exc:
            # Closing must not fail a shutdown: redis-py times out closing a connection after
            # socket_connect_timeout (state.timeout_ms), which a loaded machine can exceed.
            log.warning("state backend: closing the Redis connections: %s", exc)

    # -- quotas ------------------------------------------------------------------------------
    def quota(self, key: str, spec: QuotaSpec) -> Quota:
        return SharedQuota(self, self.config.key_prefix + key, spec)

    @property
    def up(self) -> bool:
        return self.clock.monotonic() >= self._down_until

    async def call(self, operation: str, script: Callable[..., Awaitable[Any]], keys: Sequence[str],
                   args: Sequence[Any], *, probe: bool = False) -> Any:
        """One script call within the timeout; `_FAILED` on any error (or while Redis is down,
        unless this call is the probe that finds out whether it is back)."""
        if not probe and not self.up:
            return _FAILED
        try:
            async with asyncio.timeout(self._timeout):
                result = await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed(operation, exc)
            return _FAILED
        self._answered()
        return result

    def _answered(self) -> None:
        if self._down:
            self._down = False
            self._down_until = float("-inf")
            log.warning("state backend: redis answers again; limits and health are shared again")

    def _failed(self, operation: str, exc: BaseException) -> None:
        self._observer.state_backend_error(_NAME, operation)
        self._down_until = self.clock.monotonic() + RETRY_AFTER_ERROR_S
        if not self._down:
            self._down = True
            log.warning("state backend: redis call failed (%s: %s); on_error=%s applies until it answers",
                        operation, type(exc).__name__, self.config.on_error)

    # -- bucket decisions, pipelined --------------------------------------------------------
    # Decisions and writes made in the same event-loop turn go to Redis as one pipeline: one
    # connection, one write, one read. redis-py costs ~120 µs of CPU per lone call, ~30-50 µs
    # per call in a pipeline; under load most decisions share a turn with others.
    async def decide(self, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """One bucket script call; its result, or `_FAILED` (Redis down, slow, or erroring)."""
        if not self.up:
            return _FAILED
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if not self._enqueue("take", keys, args, future):
            return _FAILED
        return await future

    def write_later(self, operation: str, keys: Sequence[str], args: Sequence[Any]) -> bool:
        """Fire-and-forget bucket write. False when it was not sent (Redis down or backlog full)."""
        return self.up and self._enqueue(operation, keys, args, None)

    def _enqueue(self, operation: str, keys: Sequence[str], args: Sequence[Any],
                 future: asyncio.Future[Any] | None) -> bool:
        if len(self._writes) >= _MAX_BACKGROUND_WRITES:
            self._observer.state_backend_error(_NAME, operation)
            return False
        if not self._queue:
            asyncio.get_running_loop().call_soon(self._flush)
        self._queue.append((operation, keys, args, future))
        return True

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        results: list[Any] = [_FAILED] * len(batch)
        try:
            async with asyncio.timeout(self._timeout):
                results = await self._pipeline(batch)
                if any(isinstance(r, NoScriptError) for r in results):  # Redis restarted: reload once
                    await self._client.script_load(BUCKETS)
                    redo = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
                    for i, result in zip(redo, await self._pipeline([batch[i] for i in redo]), strict=True):
                        results[i] = result
        except (RedisError, OSError, TimeoutError) as exc:
            for operation, _, _, _ in batch[1:]:
                self._observer.state_backend_error(_NAME, operation)
            self._failed(batch[0][0], exc)  # counts the first, marks Redis down, logs once
            results = [_FAILED] * len(batch)
        else:
            self._answered()
        for (operation, _, _, future), result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                self._observer.state_backend_error(_NAME, operation)
                result = _FAILED
            if future is not None and not future.done():
                future.set_result(result)

    async def _pipeline(self, batch: list[_Queued]) -> list[Any]:
        if len(batch) == 1:  # a pipeline object costs more than it saves for one call
            _, keys, args, _ = batch[0]
            try:
                return [await self._client.evalsha(self.buckets.sha, len(keys), *keys, *args)]
            except NoScriptError as exc:
                return [exc]
        pipe = self._client.pipeline(transaction=False)
        for _, keys, args, _ in batch:
            pipe.evalsha(self.buckets.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    # -- health ------------------------------------------------------------------------------
    def publish(self, field: str, seconds: float) -> None:
        ms = max(1, round(seconds * 1000))
        if ms > self._pending.get(field, 0):
            self._pending[field] = ms
        self._wake.set()

    def clear(self, field: str) -> None:
        self._pending[field] = -1  # the script deletes the field
        self._wake.set()

    async def claim(self, name: str, seconds: float) -> bool:
        """SET NX with a TTL: the replica that sets it owns `name` for `seconds`. While Redis is
        unreachable every replica claims (each probes on its own, as with `on_error: local`)."""
        if not self.up:
            return True
        try:
            async with asyncio.timeout(self._timeout):
                claimed = await self._client.set(self.config.key_prefix + "claim:" + name, "1", nx=True,
                                                 px=max(1, round(seconds * 1000)))
        except (RedisError, OSError, TimeoutError) as exc:
            self._failed("claim", exc)
            return True
        self._answered()
        return bool(claimed)

    async def sync(self) -> bool:
        """Publish pending ejections/throttles and read everyone's; one round trip."""
        pending, self._pending = self._pending, {}
        args: list[Any] = []
        for field, ms in pending.items():
            args += [field, ms]
        result = await self.call("health", self._health, [self._health_key], args, probe=True)
        if result is _FAILED:
            return False
        report = []
        for i in range(0, len(result) - 1, 2):
            field = result[i].decode() if isinstance(result[i], bytes) else str(result[i])
            report.append((field, float(result[i + 1]) / 1000.0))
        self.last_report = report
        if self._apply is not None and report:
            self._apply(report)
        return True

    async def _sync_loop(self) -> None:
        # A timer sets the event rather than a timeout around the wait: on Python 3.11 a cancel that
        # lands as a timeout fires can be swallowed, and aclose() would wait for this task forever.
        loop = asyncio.get_running_loop()
        while not self._closing:
            tick = loop.call_later(self._interval, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                tick.cancel()
            self._wake.clear()
            if self._closing:
                return
            try:
                await self.sync()
            except Exception:  # a bug here must not end health sharing for the process's life
                log.exception("state backend: health sync failed")


class SharedQuota:
    """A quota whose buckets live in Redis; `on_error` decides while Redis is unreachable."""

    __slots__ = ("_backend", "_blocked_until", "_fallback", "_keys", "_kinds", "_rates", "spec",
                 "token_capacity")

    def __init__(self, backend: RedisBackend, key: str, spec: QuotaSpec) -> None:
        self.spec = spec
        self._backend = backend
        self._keys: list[str] = []
        self._kinds: list[str] = []
        self._rates: list[Rate] = []
        for kind, rate in ((REQUESTS, spec.requests), (TOKENS, spec.tokens)):
            if rate is not None:
                self._keys.append(f"{key}:{kind}")
                self._kinds.append(kind)
                self._rates.append(rate)
        self.token_capacity = spec.tokens.capacity if spec.tokens is not None else None
        on_error = backend.config.on_error
        self._fallback = MemoryQuota(spec, 1.0 / backend.config.replicas) if on_error == "local" else None
        self._blocked_until = float("-inf")  # what the last refusal said, for the planner's view

    def wait_time(self, tokens: float) -> float:
        backend = self._backend
        if not backend.up:
            return self._fallback_wait(tokens)
        now = backend.clock.monotonic()
        return self._blocked_until - now if self._blocked_until > now else 0.0

    async def take(self, tokens: float, max_wait: float) -> tuple[float, str]:
        backend = self._backend
        clock = backend.clock
        end = clock.monotonic() + max_wait
        while True:
            args: list[Any] = ["take"]
            for kind, rate in zip(self._kinds, self._rates, strict=True):
                args += [rate.capacity, rate.per_second, 1 if kind == REQUESTS else tokens]
            result = await backend.decide(self._keys, args)
            if result is _FAILED:
                return await self._fallback_take(tokens, max(0.0, end - clock.monotonic()))
            wait_s, _, index = (result.decode() if isinstance(result, bytes) else str(result)).partition(" ")
            wait = float(wait_s)
            now = clock.monotonic()
            if wait <= 0:
                self._blocked_until = float("-inf")
                return 0.0, ""
            self._blocked_until = now + wait
            if now + wait > end:
                return wait, self._kinds[int(index) - 1] if index else REQUESTS
            await asyncio.sleep(wait)  # queue_s: the caller agreed to wait this long

    def adjust_tokens(self, delta: float) -> None:
        if self.spec.tokens is None or delta == 0:
            return
        rate = self.spec.tokens
        if not self._backend.write_later("adjust", [self._keys[-1]],
                                         ["adjust", rate.capacity, rate.per_second, delta]) \
                and self._fallback is not None:
            self._fallback.adjust_tokens(delta)

    # -- while Redis is unreachable -----------------------------------------------------------
    def _fallback_wait(self, tokens: float) -> float:
        mode = self._backend.config.on_error
        if mode == "allow":
            return 0.0
        if mode == "deny":
            return RETRY_AFTER_ERROR_S
        assert self._fallback is not None
        return self._fallback.wait_time(tokens)

    async def _fallback_take(self, tokens: float, max_wait: float) -> tuple[float, str]:
        mode = self._backend.config.on_error
        if mode == "allow":
            return 0.0, ""
        if mode == "deny":
            return RETRY_AFTER_ERROR_S, UNAVAILABLE
        assert self._fallback is not None
        return await self._fallback.take(tokens, max_wait)
