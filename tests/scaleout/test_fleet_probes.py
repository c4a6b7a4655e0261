"""Health probes across a fleet, against a real redis-server: one prober per interval, and its verdict shared.

With `state.backend: redis`, every replica's prober sees the same ejection, so they must agree on
who probes: `RedisBackend.claim` (SET NX with a TTL) gives each period to exactly one replica, and
to one again once the period is over. What the winner learns reaches the others through the
health hash: the ejections it clears are gone from their next sync, and the `recovered:<provider>`
it publishes makes their ledgers close the ejections they had adopted (health/ledger.py).

Two `RedisBackend`s in one process stand for two replicas; they share nothing but Redis. Health
syncs are called directly: the backends' own sync loops are set an hour apart, so they only run
when a publish wakes them, and each step's report is known. Only the claim's expiry (and one
recovery's age) wait for real time, since Redis owns those clocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router.clock import Clock, FakeClock, SystemClock
from router.health.backends import EJECT, HealthReport
from router.health.breaker import BreakerState
from router.health.ledger import Ledger
from router.health.redis_backend import RedisBackend
from router.health.view import READY
from router.observe.observer import NullObserver
from router.policy.loader import parse_policy
from router.policy.model import Policy, StatePolicy, Target
from tests.scaleout.conftest import RedisServer

PREFIX = "fleet:"
PERIOD_S = 0.3
# Generous: on a busy machine the 50 ms default could time out, and a replica that cannot reach Redis
# claims every period for itself (as `on_error: local` would), which is not what is under test here.
TIMEOUT_MS = 2000

POLICY = """
providers:
  p:
    base_url: http://127.0.0.1:9/v1
    health_probe: {interval_s: 5}
    breaker: {consecutive_failures: 1, base_ejection_s: 5, max_ejection_s: 10}
routes:
  chat:
    targets:
      - {provider: p, model: m1}
      - {provider: p, model: m2}
"""
P1 = Target("p", "m1")
P2 = Target("p", "m2")

Replica = Callable[[Callable[[HealthReport], None]], Awaitable[RedisBackend]]


@pytest.fixture
async def replica(redis_server: RedisServer) -> AsyncIterator[Replica]:
    """Start a `RedisBackend` on the test's Redis with `apply` as its health callback; all are closed
    at teardown."""
    started: list[RedisBackend] = []

    async def start(apply: Callable[[HealthReport], None]) -> RedisBackend:
        config = StatePolicy(backend="redis", url=redis_server.url, key_prefix=PREFIX, timeout_ms=TIMEOUT_MS)
        backend = RedisBackend(config, observer=NullObserver(), clock=SystemClock(), sync_interval_s=3600.0)
        started.append(backend)
        await backend.start(apply)
        return backend

    yield start
    await asyncio.gather(*(backend.aclose() for backend in started))


def ignore(report: HealthReport) -> None:
    pass


class Reports:
    """The health reports one replica's syncs delivered."""

    def __init__(self) -> None:
        self.seen: list[dict[str, float]] = []

    def __call__(self, report: HealthReport) -> None:
        self.seen.append(dict(report))


def policy() -> Policy:
    return parse_policy(POLICY)


def eject(ledger: Ledger, target: Target, now: float) -> None:
    """A client request failed on `target` here: its breaker opens and the fleet is told."""
    breaker = ledger.breaker(target)
    permit = breaker.acquire(now)
    assert permit is not None
    assert breaker.on_failure(permit, now)
    assert breaker.open_until is not None
    ledger.ejected(target, breaker.open_until, now)


# --- claim: one replica per period ---------------------------------------------------------------

async def test_exactly_one_replica_wins_the_probe_claim_per_period(replica: Replica,
                                                                   redis_server: RedisServer) -> None:
    a, b = await replica(ignore), await replica(ignore)
    for _ in range(2):  # two periods in a row
        claimed = await asyncio.gather(a.claim("probe:p", PERIOD_S), b.claim("probe:p", PERIOD_S))
        started = time.monotonic()
        assert sorted(claimed) == [False, True]
        ttl_ms = int(redis_server.command("PTTL", PREFIX + "claim:probe:p").strip(":\r\n"))
        assert 0 < ttl_ms <= PERIOD_S * 1000
        # Within the period nobody wins it again, the winner included.
        assert await asyncio.gather(a.claim("probe:p", PERIOD_S), b.claim("probe:p", PERIOD_S)) == [False, False]
        assert time.monotonic() - started < PERIOD_S  # (the check above really ran within the period)
        await asyncio.sleep(PERIOD_S + 0.05)


async def test_after_the_period_the_claim_is_won_again(replica: Replica) -> None:
    a, b = await replica(ignore), await replica(ignore)
    assert await a.claim("probe:p", PERIOD_S)
    assert not await b.claim("probe:p", PERIOD_S)
    await asyncio.sleep(PERIOD_S + 0.05)
    assert await b.claim("probe:p", PERIOD_S)  # the other replica's turn now
    assert not await a.claim("probe:p", PERIOD_S)


async def test_claims_of_different_providers_are_independent(replica: Replica) -> None:
    a, b = await replica(ignore), await replica(ignore)
    assert await a.claim("probe:p", PERIOD_S)
    assert await b.claim("probe:q", PERIOD_S)
    assert not await a.claim("probe:q", PERIOD_S)
    assert not await b.claim("probe:p", PERIOD_S)


# --- publish and clear ---------------------------------------------------------------------------

async def test_a_field_cleared_by_one_replica_is_gone_from_the_others_next_sync(replica: Replica) -> None:
    reports = Reports()
    a, b = await replica(ignore), await replica(reports)
    a.publish(EJECT + "p/m1", 5.0)
    a.publish(EJECT + "p/m2", 5.0)
    assert await a.sync()
    assert await b.sync()
    assert reports.seen[-1].keys() == {EJECT + "p/m1", EJECT + "p/m2"}
    assert 4.0 < reports.seen[-1][EJECT + "p/m1"] <= 5.0
    a.clear(EJECT + "p/m1")
    assert await a.sync()
    assert await b.sync()
    assert reports.seen[-1].keys() == {EJECT + "p/m2"}  # only the cleared field is gone
    a.clear(EJECT + "p/m2")
    assert await a.sync()
    count = len(reports.seen)
    assert await b.sync()
    assert len(reports.seen) == count  # nothing left: an empty report is not delivered


async def test_a_clear_wins_over_a_publish_of_the_same_field_before_the_sync(replica: Replica) -> None:
    reports = Reports()
    a, b = await replica(ignore), await replica(reports)
    a.publish(EJECT + "p/m1", 5.0)
    assert await a.sync()
    a.publish(EJECT + "p/m1", 9.0)
    a.clear(EJECT + "p/m1")  # the probe found it back after all
    assert await a.sync()
    b.publish(EJECT + "other/x", 5.0)  # so that b's report is not empty
    assert await b.sync()
    assert EJECT + "p/m1" not in reports.seen[-1]


# --- a recovery found by one replica's probe, adopted by another ----------------------------------

class Member:
    """One replica's health state: a ledger on its own backend, adopting what its health syncs report."""

    backend: RedisBackend
    ledger: Ledger

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.changes: list[tuple[str, str, str]] = []  # (provider, target, state) adopted from syncs

    def apply(self, report: HealthReport) -> None:
        self.changes += self.ledger.adopt_health(report, self.clock.monotonic())

    @classmethod
    async def start(cls, replica: Replica, clock: Clock, shared: Policy) -> Member:
        member = cls(clock)
        member.backend = await replica(member.apply)  # (the hash is empty: start() applies nothing)
        member.ledger = Ledger(shared, backend=member.backend)
        return member


async def two_members(replica: Replica, clock: Clock) -> tuple[Member, Member]:
    shared = policy()
    return await Member.start(replica, clock, shared), await Member.start(replica, clock, shared)


async def test_a_recovery_published_by_one_replica_closes_the_ejection_adopted_by_another(replica: Replica) -> None:
    clock = FakeClock()
    a, b = await two_members(replica, clock)

    # Replica a's client requests fail on p/m1: its breaker opens and b adopts the ejection.
    eject(a.ledger, P1, clock.monotonic())
    assert await a.backend.sync()
    assert await b.backend.sync()
    assert a.changes == []  # its own ejection, reported back to it, changes nothing
    assert b.changes == [("p", "p/m1", "open")]
    assert b.ledger.breaker(P1).state(clock.monotonic()) is BreakerState.OPEN
    assert b.ledger.breaker(P2).state(clock.monotonic()) is BreakerState.CLOSED

    # a's prober finds p back: it closes its own breakers, clears the ejection, publishes the recovery.
    clock.advance(5.0)
    assert a.ledger.recovered("p", clock.monotonic()) == [("p/m1", "closed")]
    assert await a.backend.sync()
    assert await b.backend.sync()
    assert b.changes == [("p", "p/m1", "open"), ("p", "p/m1", "closed")]
    now = clock.monotonic()
    assert b.ledger.breaker(P1).state(now) is BreakerState.CLOSED
    assert b.ledger.availability(P1, now, 100) == READY


async def test_an_adopted_recovery_leaves_an_ejection_from_after_it_open(replica: Replica) -> None:
    clock = SystemClock()  # the recovery's age comes from Redis time: the ledgers run on real time here
    a, b = await two_members(replica, clock)
    eject(a.ledger, P1, clock.monotonic())
    assert await a.backend.sync()
    assert await b.backend.sync()
    assert b.ledger.breaker(P1).open_until is not None  # adopted

    a.ledger.recovered("p", clock.monotonic())
    assert await a.backend.sync()
    # A replica dates a recovery by the time left on its field when it applies the report, so the date
    # comes out late by that sync's round trip (and by any stall of this busy machine's event loop):
    # the failure comes well after the recovery, not a few milliseconds after it.
    await asyncio.sleep(0.3)
    eject(b.ledger, P2, clock.monotonic())  # b's own failure, after the recovery was published
    b.changes.clear()
    assert await b.backend.sync()
    now = clock.monotonic()
    assert b.changes == [("p", "p/m1", "closed")]
    assert b.ledger.breaker(P1).state(now) is BreakerState.CLOSED
    assert b.ledger.breaker(P2).state(now) is BreakerState.OPEN
