"""The Redis backend's quotas against a real redis-server: atomic, shared, on server time, no leaks."""

from __future__ import annotations

import asyncio
import time

from router.clock import SystemClock
from router.health.quota import REQUESTS, TOKENS, QuotaSpec, Rate
from router.health.redis_backend import RedisBackend
from router.observe.observer import NullObserver
from router.policy.model import StatePolicy
from tests.scaleout.conftest import RedisServer


async def backend(server: RedisServer, **config: object) -> RedisBackend:
    state = StatePolicy(**{"backend": "redis", "url": server.url, "key_prefix": "t:", **config})  # type: ignore[arg-type]
    started = RedisBackend(state, observer=NullObserver(), clock=SystemClock())
    await started.start(lambda report: None)
    return started


def level(server: RedisServer, key: str) -> float:
    reply = server.command("HGET", key, "level")
    return float(reply.split("\r\n")[1]) if reply.startswith("$") and not reply.startswith("$-1") else 0.0


async def test_both_buckets_or_neither(redis_server: RedisServer) -> None:
    b = await backend(redis_server)
    try:
        quota = b.quota("client:a", QuotaSpec(Rate(10, 0.001), Rate(100, 0.001)))
        assert await quota.take(60, 0) == (0.0, "")
        wait, kind = await quota.take(60, 0)  # the request fits, the tokens do not
        assert kind == TOKENS and wait > 1
        # Nothing was taken by the refused decision: one request and 60 tokens in the buckets.
        assert round(level(redis_server, "t:client:a:requests")) == 1
        assert round(level(redis_server, "t:client:a:tokens")) == 60
    finally:
        await b.aclose()


async def test_two_replicas_share_one_bucket(redis_server: RedisServer) -> None:
    replicas = [await backend(redis_server) for _ in range(3)]
    try:
        quotas = [r.quota("client:a", QuotaSpec(Rate(20, 0.001), None)) for r in replicas]
        results = await asyncio.gather(*(quotas[i % 3].take(1, 0) for i in range(60)))
        admitted = sum(1 for wait, _ in results if wait == 0)
        assert admitted == 20
        assert {kind for wait, kind in results if wait > 0} == {REQUESTS}
    finally:
        await asyncio.gather(*(r.aclose() for r in replicas))


async def test_refill_and_queueing_follow_redis_time(redis_server: RedisServer) -> None:
    b = await backend(redis_server)
    try:
        quota = b.quota("client:q", QuotaSpec(Rate(2, 20.0), None))  # 2 burst, one every 50 ms
        assert (await quota.take(1, 0))[0] == 0 and (await quota.take(1, 0))[0] == 0
        wait, _ = await quota.take(1, 0)
        assert 0.03 < wait <= 0.05
        assert quota.wait_time(1) > 0  # the planner's local view remembers the refusal
        started = time.monotonic()
        assert await quota.take(1, 1.0) == (0.0, "")  # queue_s: waits for the refill instead
        assert 0.02 < time.monotonic() - started < 0.5
        assert quota.wait_time(1) == 0
    finally:
        await b.aclose()


async def test_token_returns_and_charges_are_applied(redis_server: RedisServer) -> None:
    b = await backend(redis_server)
    try:
        quota = b.quota("provider:p", QuotaSpec(None, Rate(1000, 0.001)))
        assert (await quota.take(400, 0))[0] == 0
        quota.adjust_tokens(-300)  # used only 100
        quota.adjust_tokens(+50)  # then 50 more than reserved elsewhere
        await _writes_done(b)
        assert round(level(redis_server, "t:provider:p:tokens")) == 150
    finally:
        await b.aclose()


async def test_every_key_expires(redis_server: RedisServer) -> None:
    b = await backend(redis_server)
    try:
        quota = b.quota("client:ttl", QuotaSpec(Rate(5, 5.0), Rate(600, 10.0)))
        await quota.take(100, 0)
        b.publish("eject:x", 2.0)
        assert await b.sync()
        for key in ("t:client:ttl:requests", "t:client:ttl:tokens", "t:health"):
            ttl = int(redis_server.command("PTTL", key).strip(":\r\n"))
            # Expires once it would be empty again: level/rate plus one second of slack.
            assert 0 < ttl <= 11_000, (key, ttl)
    finally:
        await b.aclose()


async def test_health_is_published_and_read_with_remaining_time(redis_server: RedisServer) -> None:
    a, b = await backend(redis_server), await backend(redis_server)
    seen: list[list[tuple[str, float]]] = []
    b._apply = lambda report: seen.append(list(report))
    try:
        a.publish("eject:p/m", 5.0)
        a.publish("throttle:p", 0.2)
        assert await a.sync()
        assert await b.sync()
        fields = dict(seen[-1])
        assert 4.5 < fields["eject:p/m"] <= 5.0 and 0 < fields["throttle:p"] <= 0.2
        a.publish("eject:p/m", 1.0)  # shorter: never shortens what is there
        assert await a.sync()
        await asyncio.sleep(0.25)
        assert await b.sync()
        assert dict(seen[-1]).keys() == {"eject:p/m"}  # the expired throttle is gone
    finally:
        await asyncio.gather(a.aclose(), b.aclose())


async def _writes_done(b: RedisBackend) -> None:
    for _ in range(100):
        if not b._writes:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("background writes did not finish")
