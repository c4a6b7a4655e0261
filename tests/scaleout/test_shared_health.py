"""Ejections and throttles learned by one replica reach the others within one second.

Two `Router`s in one process stand for two replicas: they share nothing but Redis
(the same holds across processes: the state lives in Redis, the breakers in each
router). Which provider a request reached is read at the fake providers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from router import Router
from router.mock import Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body
from tests.scaleout.conftest import RedisServer
from tests.support.policies import tiered_policy

PROPAGATION_S = 1.0  # the bound: the others stop sending within one second


def policy(primary: Any, backup: Any, state: dict[str, Any], failures: int = 2) -> Any:
    """`failures`: consecutive failures that open this router's own breaker; the replica that must
    learn from the others gets 1000, so its own failures never take the primary out."""
    breaker = {"consecutive_failures": failures, "base_ejection_s": 30, "max_ejection_s": 30}
    return tiered_policy(primary, backup, providers={"primary": {"breaker": breaker}},
                         retry={"max_attempts": 3}, state=state,
                         retry_budget={"percent": 100, "min_per_second": 100})


async def first_request_avoiding(router: Router, primary: Any, within_s: float) -> float | None:
    """Send one request every 50 ms; seconds until one no longer reaches `primary` (None: never)."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        before = primary.count
        await router.chat(body())
        if primary.count == before:
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    return None


async def test_an_ejection_on_one_replica_is_honoured_by_the_others(
        fake_provider: FakeProviderFactory, redis_server: RedisServer) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    state = {"backend": "redis", "url": redis_server.url, "key_prefix": "health:"}
    async with Router(policy(primary, backup, state)) as a, \
            Router(policy(primary, backup, state, failures=1000)) as b:
        await b.chat(body())
        assert primary.count == 1  # b uses the primary while it is healthy
        primary.set_default(Status(503))
        await a.chat(body())  # two 503s on `a`: its breaker opens, then the backup answers
        assert primary.count == 3 and backup.count == 1
        ejected_at = time.monotonic()
        # b has seen no failure itself; it must learn the ejection from Redis.
        took = await first_request_avoiding(b, primary, within_s=2 * PROPAGATION_S)
        assert took is not None and time.monotonic() - ejected_at <= PROPAGATION_S + 0.1, took
        hits = primary.count
        for _ in range(5):
            await b.chat(body())
        assert primary.count == hits  # and keeps avoiding it


async def test_a_throttle_on_one_replica_is_honoured_by_the_others(
        fake_provider: FakeProviderFactory, redis_server: RedisServer) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    state = {"backend": "redis", "url": redis_server.url, "key_prefix": "throttle:"}
    async with Router(policy(primary, backup, state)) as a, \
            Router(policy(primary, backup, state, failures=1000)) as b:
        primary.script(Status.rate_limited("30"))
        await a.chat(body())  # 429 Retry-After: 30 on a, answered by the backup
        assert (primary.count, backup.count) == (1, 1)
        throttled_at = time.monotonic()
        took = await first_request_avoiding(b, primary, within_s=2 * PROPAGATION_S)
        assert took is not None and time.monotonic() - throttled_at <= PROPAGATION_S + 0.1, took


@pytest.mark.slow
async def test_without_redis_the_other_replica_keeps_using_the_failed_provider(
        fake_provider: FakeProviderFactory) -> None:
    """The control: what the two tests above would see if nothing were shared."""
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    state = {"backend": "memory"}
    async with Router(policy(primary, backup, state)) as a, \
            Router(policy(primary, backup, state, failures=1000)) as b:
        primary.set_default(Status(503))
        await a.chat(body())
        assert await first_request_avoiding(b, primary, within_s=2 * PROPAGATION_S) is None
