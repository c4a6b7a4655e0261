"""Out-of-band health probes (health/prober.py) with the ledger and the breakers they act on.

A provider with a `health_probe` is never tried half-open by a client request: while any of its
breakers is open the prober sends one probe per `interval_s` (the first one an interval after the
ejection is first seen), a success closes every breaker of the provider and gives each target a
fair trial, and a failure keeps them open. The planner must never force such a target either, or a
client request would do the probe's job. In a fleet, one replica per interval wins the right to
probe (`StateBackend.claim`) and a recovery it publishes is adopted by the others
(`Ledger.adopt_health`).

Everything runs on a `FakeClock`: `tick()` is driven by hand and the probe itself is a scripted
coroutine, so no test sleeps or does I/O.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable

import pytest

from router import NoTargetAvailable, Router
from router.clock import FakeClock
from router.engine.planner import GiveUp, Go, Progress, plan
from router.health.backends import EJECT, RECOVERED, RECOVERED_TTL_S, MemoryBackend, StateBackend
from router.health.breaker import BreakerState
from router.health.ledger import Ledger
from router.health.prober import TICK_S, HealthProber
from router.health.view import READY, Status
from router.observe.observer import NullObserver
from router.policy.loader import parse_policy
from router.policy.model import Policy, Provider, RetryPolicy, Target
from tests.support.memory import ScriptedTransport, error_reply

INTERVAL_S = 5.0
T0 = 1000.0

POLICY = """
providers:
  p:
    base_url: http://127.0.0.1:9/v1
    health_probe: {interval_s: 5}
    breaker: {consecutive_failures: 1, base_ejection_s: 5, max_ejection_s: 10}
  q:
    base_url: http://127.0.0.1:9/v1
    breaker: {consecutive_failures: 1, base_ejection_s: 5, max_ejection_s: 10}
routes:
  chat:
    targets:
      - {provider: p, model: m1, priority: 0}
      - {provider: p, model: m2, priority: 0}
      - {provider: q, model: m3, priority: 1}
  only-p:
    targets:
      - {provider: p, model: m1}
      - {provider: p, model: m2}
  only-q:
    targets:
      - {provider: q, model: m3}
"""
P1 = Target("p", "m1")
P2 = Target("p", "m2")
Q3 = Target("q", "m3", priority=1)


class RecordingObserver(NullObserver):
    def __init__(self) -> None:
        self.probes: list[tuple[str, bool]] = []
        self.changes: list[tuple[str, str, str]] = []

    def health_probed(self, provider: str, ok: bool) -> None:
        self.probes.append((provider, ok))

    def breaker_changed(self, provider: str, target: str, state: str) -> None:
        self.changes.append((provider, target, state))


class ScriptedCheck:
    """The probe: records who was probed when, answers from a script (the last answer repeats), and
    can be held open (`gate`) to see whether a second probe starts while one is out."""

    def __init__(self, clock: FakeClock, *answers: bool) -> None:
        self.clock = clock
        self.answers = list(answers) or [False]
        self.calls: list[tuple[str, float]] = []
        self.active = 0
        self.most_active = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.cancelled = False

    async def __call__(self, provider: Provider) -> bool:
        self.calls.append((provider.name, self.clock.monotonic()))
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        self.started.set()
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self.active -= 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]

    @property
    def times(self) -> list[float]:
        return [at for _, at in self.calls]


class RecordingBackend(MemoryBackend):
    """The in-process backend, recording the claims, publications and clears it is asked for."""

    def __init__(self, claims_granted: bool = True) -> None:
        super().__init__()
        self.claims_granted = claims_granted
        self.claims: list[tuple[str, float]] = []
        self.published: list[tuple[str, float]] = []
        self.cleared: list[str] = []

    async def claim(self, name: str, seconds: float) -> bool:
        self.claims.append((name, seconds))
        return self.claims_granted

    def publish(self, field: str, seconds: float) -> None:
        self.published.append((field, seconds))

    def clear(self, field: str) -> None:
        self.cleared.append(field)


class Harness:
    def __init__(self, *answers: bool, backend: StateBackend | None = None) -> None:
        self.clock = FakeClock(T0)
        self.policy: Policy = parse_policy(POLICY)
        self.backend = backend or RecordingBackend()
        self.ledger = Ledger(self.policy, backend=self.backend)
        self.check = ScriptedCheck(self.clock, *answers)
        self.observer = RecordingObserver()
        self.prober = HealthProber(lambda: (self.policy, self.ledger), self.check, observer=self.observer,
                                   clock=self.clock)

    @property
    def now(self) -> float:
        return self.clock.monotonic()

    def eject(self, *targets: Target) -> None:
        """A client request failed on each target: one failure opens its breaker (5 s)."""
        for target in targets:
            breaker = self.ledger.breaker(target)
            permit = breaker.acquire(self.now)
            assert permit is not None, f"{target.key} is already out"
            assert breaker.on_failure(permit, self.now)
            assert breaker.state(self.now) is BreakerState.OPEN

    async def tick(self) -> None:
        await self.prober.tick()
        await settle()

    async def run_for(self, seconds: float) -> None:
        """What `run()` does, on the fake clock: a tick every TICK_S for `seconds`."""
        end = self.now + seconds
        while self.now < end:
            self.clock.advance(TICK_S)
            await self.tick()

    def state(self, target: Target) -> BreakerState:
        return self.ledger.breaker(target).state(self.now)


async def settle() -> None:
    """Let the probe tasks that tick() created run to completion."""
    for _ in range(3):
        await asyncio.sleep(0)


def decide(ledger: Ledger, tiers: Iterable[Iterable[Target]], now: float) -> Go | GiveUp:
    return plan([list(tier) for tier in tiers], Progress(), requested_model="chat", now=now, deadline=now + 60,
                tokens=100, retry=RetryPolicy(), strategy="weighted", view=ledger, rng=random.Random(1))


# --- when probes are sent -------------------------------------------------------------------------

async def test_nothing_is_probed_while_no_breaker_is_open() -> None:
    h = Harness(True)
    await h.tick()
    await h.run_for(60.0)
    assert h.check.calls == []
    assert h.observer.probes == []
    assert h.backend.claims == []  # type: ignore[attr-defined]


async def test_the_first_probe_comes_one_interval_after_the_ejection_is_seen_not_before() -> None:
    h = Harness(False)
    await h.tick()
    h.eject(P1)
    await h.tick()  # the ejection is seen now
    seen_at = h.now
    await h.run_for(INTERVAL_S - TICK_S)
    assert h.check.calls == []
    await h.run_for(TICK_S)
    assert h.check.calls == [("p", seen_at + INTERVAL_S)]
    assert h.observer.probes == [("p", False)]


async def test_an_ejection_seen_late_still_waits_a_full_interval() -> None:
    h = Harness(False)
    h.eject(P1)
    h.clock.advance(3.0)  # no tick ran while the breaker opened
    await h.tick()
    seen_at = h.now
    await h.run_for(INTERVAL_S - TICK_S)
    assert h.check.calls == []
    await h.run_for(TICK_S)
    assert h.check.times == [seen_at + INTERVAL_S]


async def test_then_one_probe_per_interval_while_it_stays_down() -> None:
    h = Harness(False)
    h.eject(P1, P2)
    await h.tick()
    seen_at = h.now
    await h.run_for(4 * INTERVAL_S)
    assert h.check.times == [seen_at + k * INTERVAL_S for k in (1, 2, 3, 4)]
    assert h.observer.probes == [("p", False)] * 4
    assert h.check.most_active == 1
    # One probe per provider, not one per ejected target.
    assert [name for name, _ in h.check.calls] == ["p"] * 4


async def test_never_two_probes_at_once_even_when_one_outlasts_the_interval() -> None:
    h = Harness(False)
    h.check.gate = asyncio.Event()
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert len(h.check.calls) == 1 and h.check.active == 1
    await h.run_for(3 * INTERVAL_S)  # three more intervals with the first probe still out
    assert len(h.check.calls) == 1
    assert h.observer.probes == []
    h.check.gate.set()
    await settle()
    assert h.observer.probes == [("p", False)]
    await h.tick()  # overdue: the next probe starts at once, and only one
    assert len(h.check.calls) == 2
    assert h.check.most_active == 1


async def test_a_provider_without_health_probe_is_never_probed() -> None:
    h = Harness(True)
    h.eject(Q3)
    await h.tick()
    await h.run_for(6 * INTERVAL_S)
    assert h.check.calls == []
    assert h.backend.claims == []  # type: ignore[attr-defined]
    # Its breaker is an ordinary one: a client request is its half-open probe.
    breaker = h.ledger.breaker(Q3)
    assert not breaker.probed
    assert breaker.acquire(h.now) is not None


async def test_only_the_provider_with_the_probe_is_probed_when_both_are_ejected() -> None:
    h = Harness(False)
    h.eject(P1, Q3)
    await h.tick()
    await h.run_for(2 * INTERVAL_S)
    assert {name for name, _ in h.check.calls} == {"p"}
    assert h.backend.claims == [("probe:p", INTERVAL_S)] * 2  # type: ignore[attr-defined]


async def test_no_probe_is_sent_when_another_replica_holds_the_claim() -> None:
    backend = RecordingBackend(claims_granted=False)
    h = Harness(True, backend=backend)
    h.eject(P1)
    await h.tick()
    await h.run_for(3 * INTERVAL_S)
    assert h.check.calls == []
    assert h.observer.probes == []
    assert backend.claims == [("probe:p", INTERVAL_S)] * 3  # asked once per interval, for that interval
    assert h.state(P1) is BreakerState.OPEN  # nobody here closes it


async def test_a_claim_won_later_sends_the_probe_then() -> None:
    backend = RecordingBackend(claims_granted=False)
    h = Harness(True, backend=backend)
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.check.calls == []
    backend.claims_granted = True
    await h.run_for(INTERVAL_S)
    assert len(h.check.calls) == 1
    assert h.state(P1) is BreakerState.CLOSED


# --- what a probe's answer does ---------------------------------------------------------------------

async def test_a_successful_probe_closes_every_breaker_of_the_provider() -> None:
    h = Harness(True)
    h.eject(P1, P2, Q3)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.check.calls == [("p", T0 + INTERVAL_S)]
    for target in (P1, P2):
        assert h.state(target) is BreakerState.CLOSED
        assert h.ledger.breaker(target).open_until is None
        assert h.ledger.availability(target, h.now, 100) == READY
    assert h.observer.probes == [("p", True)]
    assert sorted(h.observer.changes) == [("p", "p/m1", "closed"), ("p", "p/m2", "closed")]
    # The other provider's breaker is not the probe's business.
    assert h.ledger.breaker(Q3).open_until is not None


async def test_a_success_reports_only_the_breakers_it_closed() -> None:
    h = Harness(True)
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.observer.changes == [("p", "p/m1", "closed")]
    assert h.state(P2) is BreakerState.CLOSED


async def test_a_success_tells_the_fleet_the_ejections_are_over() -> None:
    backend = RecordingBackend()
    h = Harness(True, backend=backend)
    h.eject(P1, P2)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert sorted(backend.cleared) == [EJECT + "p/m1", EJECT + "p/m2"]
    assert (RECOVERED + "p", RECOVERED_TTL_S) in backend.published


async def test_after_a_recovery_probing_stops_and_a_new_ejection_waits_a_full_interval_again() -> None:
    h = Harness(True)
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert len(h.check.calls) == 1
    await h.run_for(3 * INTERVAL_S)
    assert len(h.check.calls) == 1  # nothing open: nothing to probe
    h.eject(P2)
    await h.tick()
    seen_at = h.now
    await h.run_for(INTERVAL_S - TICK_S)
    assert len(h.check.calls) == 1  # the old due time was forgotten
    await h.run_for(TICK_S)
    assert h.check.times[-1] == seen_at + INTERVAL_S


async def test_a_failed_probe_keeps_the_breakers_open() -> None:
    h = Harness(False)
    h.eject(P1, P2)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.observer.probes == [("p", False)]
    assert h.observer.changes == []
    for target in (P1, P2):
        breaker = h.ledger.breaker(target)
        assert breaker.state(h.now) is BreakerState.OPEN
        assert breaker.last_failure == h.now  # the probe's failure counts as the latest
        assert breaker.open_until is not None and breaker.open_until > h.now  # an elapsed ejection restarted


async def test_a_failed_probe_tells_the_fleet_the_targets_are_still_out() -> None:
    backend = RecordingBackend()
    h = Harness(False, backend=backend)
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    published = dict(backend.published)
    assert EJECT + "p/m1" in published and published[EJECT + "p/m1"] > 0
    assert EJECT + "p/m2" not in published  # it was never ejected
    assert backend.cleared == []


async def test_a_probed_breaker_never_admits_a_client_request() -> None:
    h = Harness(False)
    h.eject(P1, P2)
    await h.tick()
    await h.run_for(2 * INTERVAL_S)  # two failed probes
    breaker = h.ledger.breaker(P1)
    assert breaker.probed
    open_until = breaker.open_until
    assert open_until is not None
    h.clock.advance(1000.0)  # long after the ejection would have ended
    assert h.now > open_until + 900
    assert breaker.acquire(h.now) is None
    assert not breaker.available(h.now)
    assert breaker.state(h.now) is BreakerState.OPEN
    availability = h.ledger.availability(P1, h.now, 100)
    assert availability.status is Status.OPEN and availability.probed


async def test_it_comes_back_on_the_first_successful_probe_after_failures() -> None:
    h = Harness(False, False, True)
    h.eject(P1)
    await h.tick()
    await h.run_for(3 * INTERVAL_S)
    assert h.observer.probes == [("p", False), ("p", False), ("p", True)]
    assert h.state(P1) is BreakerState.CLOSED
    # Closed: the ejection count starts over, so the next failure ejects for the base time again.
    h.eject(P1)
    assert h.ledger.breaker(P1).open_until == h.now + 5.0


async def test_after_recovery_the_targets_statistics_are_forgotten() -> None:
    h = Harness(True)
    stats = h.ledger.stats(P1)
    stats.succeeded(stream=False, latency=0.8, first_byte=0.1, now=h.now, half_life_s=10.0)
    stats.failed(stream=False, elapsed=2.0, now=h.now, half_life_s=10.0)
    assert stats.latency(stream=False) == 2.0
    assert stats.recent_failures(h.now, 10.0) > 0
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.state(P1) is BreakerState.CLOSED
    assert h.ledger.stats(P1).latency(stream=False) is None
    assert h.ledger.latency(P1, stream=False) is None
    assert h.ledger.recent_failures(P1, h.now, 10.0) == 0.0


async def test_a_failed_probe_keeps_the_statistics() -> None:
    h = Harness(False)
    h.ledger.stats(P1).succeeded(stream=True, latency=0.3, first_byte=0.3, now=h.now, half_life_s=10.0)
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert h.ledger.stats(P1).latency(stream=True) == 0.3


async def test_a_probe_answers_to_the_ledger_current_when_it_finishes() -> None:
    """A reload during the probe: the new ledger (which kept the breakers) is the one closed."""
    h = Harness(True)
    h.check.gate = asyncio.Event()
    h.eject(P1)
    await h.tick()
    await h.run_for(INTERVAL_S)
    assert len(h.check.calls) == 1
    h.ledger = Ledger(h.policy, previous=h.ledger)
    assert h.state(P1) is BreakerState.OPEN  # the breaker survived the reload
    h.check.gate.set()
    await settle()
    assert h.state(P1) is BreakerState.CLOSED


# --- the planner never forces a probed target ---------------------------------------------------------

async def test_the_planner_gives_up_rather_than_force_a_probed_target() -> None:
    h = Harness(False)
    h.eject(P1, P2)
    only_p = h.policy.routes["only-p"].targets
    assert set(only_p) == {P1, P2}
    assert decide(h.ledger, [only_p], h.now) == GiveUp("exhausted")
    h.clock.advance(1000.0)  # the ejections are long over: still only the prober may close them
    assert decide(h.ledger, [only_p], h.now) == GiveUp("exhausted")


async def test_an_unprobed_provider_is_forced_when_its_whole_route_is_ejected() -> None:
    h = Harness(False)
    h.eject(Q3)
    decision = decide(h.ledger, [h.policy.routes["only-q"].targets], h.now)
    assert isinstance(decision, Go)
    assert decision.target.key == Q3.key and decision.forced


async def test_with_everything_ejected_the_unprobed_provider_is_forced_and_the_probed_one_skipped() -> None:
    h = Harness(False)
    h.eject(Q3)
    h.clock.advance(1.0)
    h.eject(P1, P2)  # failed after Q3: a forced choice by least-recent failure would prefer Q3 anyway
    decision = decide(h.ledger, [[P1, P2], [Q3]], h.now)
    assert isinstance(decision, Go) and decision.target == Q3 and decision.forced
    h2 = Harness(False)
    h2.eject(P1, P2)
    h2.clock.advance(1.0)
    h2.eject(Q3)  # the probed targets failed longer ago, and still are not forced
    decision = decide(h2.ledger, [[P1, P2], [Q3]], h2.now)
    assert isinstance(decision, Go) and decision.target == Q3 and decision.forced


async def test_after_a_successful_probe_the_planner_sends_to_the_provider_again() -> None:
    h = Harness(True)
    h.eject(P1, P2)
    only_p = h.policy.routes["only-p"].targets
    await h.tick()
    await h.run_for(INTERVAL_S)
    decision = decide(h.ledger, [only_p], h.now)
    assert isinstance(decision, Go) and decision.target in (P1, P2) and not decision.forced


# --- run() ---------------------------------------------------------------------------------------------

async def test_cancelling_run_cancels_the_probe_in_flight() -> None:
    h = Harness(True)
    h.check.gate = asyncio.Event()
    h.eject(P1)
    await h.tick()
    h.clock.advance(INTERVAL_S)  # the probe is due: run()'s first tick starts it
    task = asyncio.create_task(h.prober.run())
    await asyncio.wait_for(h.check.started.wait(), timeout=2.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await settle()
    assert h.check.cancelled
    assert h.observer.probes == []  # a cancelled probe says nothing about health
    assert h.state(P1) is BreakerState.OPEN


# --- adopting a recovery another replica's probe found ---------------------------------------------------

async def test_adopted_recovery_closes_an_adopted_ejection() -> None:
    h = Harness()
    assert h.ledger.adopt_health([(EJECT + "p/m1", 10.0)], h.now) == [("p", "p/m1", "open")]
    assert h.state(P1) is BreakerState.OPEN
    h.ledger.stats(P1).succeeded(stream=False, latency=1.5, first_byte=None, now=h.now, half_life_s=10.0)
    h.clock.advance(1.0)
    # Another replica's probe found p back just now (its field has nearly all its TTL left).
    changed = h.ledger.adopt_health([(RECOVERED + "p", RECOVERED_TTL_S - 0.25)], h.now)
    assert changed == [("p", "p/m1", "closed")]
    assert h.state(P1) is BreakerState.CLOSED
    assert h.ledger.availability(P1, h.now, 100) == READY
    assert h.ledger.stats(P1).latency(stream=False) is None


async def test_adopted_recovery_closes_own_ejections_from_before_it_but_not_from_after_it() -> None:
    h = Harness()
    h.eject(P1)  # own failure at T0
    h.clock.advance(3.0)
    h.eject(P2)  # own failure at T0 + 3
    h.clock.advance(1.0)
    # Found back at T0 + 1: now (T0 + 4) + seconds left (2) - TTL (5).
    changed = h.ledger.adopt_health([(RECOVERED + "p", 2.0)], h.now)
    assert changed == [("p", "p/m1", "closed")]
    assert h.state(P1) is BreakerState.CLOSED
    assert h.state(P2) is BreakerState.OPEN


async def test_adopted_recovery_leaves_other_providers_and_closed_breakers_alone() -> None:
    h = Harness()
    h.eject(Q3)
    assert h.ledger.adopt_health([(RECOVERED + "p", RECOVERED_TTL_S)], h.now) == []
    assert h.ledger.breaker(Q3).open_until is not None
    assert h.ledger.adopt_health([(RECOVERED + "nobody", RECOVERED_TTL_S)], h.now) == []


@pytest.mark.parametrize("recovery_first", [True, False], ids=["recovery-field-first", "ejection-field-first"])
async def test_a_stale_recovery_does_not_close_an_ejection_adopted_after_it(recovery_first: bool) -> None:
    """A peer's probe finds p back at T; at T + 1 another peer's client requests fail there and it ejects
    p/m1 for 5 s. The health syncs that follow bring both fields (a recovery stays visible for
    RECOVERED_TTL_S), in the hash's order: the recovery is older than that ejection, so the ejection
    must stand here too, and stay put from one sync to the next (no closed/open flapping)."""
    h = Harness()
    recovered_at = h.now
    assert h.ledger.adopt_health([(RECOVERED + "p", RECOVERED_TTL_S)], h.now) == []  # nothing was open
    changes: list[tuple[str, str, str]] = []
    for _ in range(2):  # two health syncs, SYNC_INTERVAL_S apart
        h.clock.advance(0.25)
        recovery = (RECOVERED + "p", RECOVERED_TTL_S - (h.now - recovered_at))
        ejection = (EJECT + "p/m1", 5.0)
        changes += h.ledger.adopt_health([recovery, ejection] if recovery_first else [ejection, recovery], h.now)
        assert h.state(P1) is BreakerState.OPEN, "a peer's ejection from after the recovery was undone"
    assert changes == [("p", "p/m1", "open")], "the adopted ejection flapped closed and open again"


async def test_a_route_whose_probed_targets_are_all_out_answers_with_a_retry_after_not_a_busy_loop() -> None:
    """Probed breakers stay open past their ejection, until the prober finds the provider back: the
    request refused meanwhile must still say when to come back (at least a second), never 0 or nothing."""
    policy = parse_policy("""
providers:
  a: {base_url: "http://127.0.0.1:9/v1", health_probe: {interval_s: 5}, breaker: {consecutive_failures: 1}}
  b: {base_url: "http://127.0.0.1:9/v1", health_probe: {interval_s: 5}, breaker: {consecutive_failures: 1}}
routes:
  chat:
    retry: {max_attempts: 2, max_attempts_per_target: 1}
    targets: [{provider: a, model: m}, {provider: b, model: m, priority: 1}]
""")
    clock = FakeClock()

    async def still_down(provider: object) -> bool:
        return False

    async def sleep(seconds: float) -> None:
        clock.advance(seconds)

    transport = ScriptedTransport(a=[error_reply(500)], b=[error_reply(500)])
    router = Router(policy, transport=transport, clock=clock, sleep=sleep, health_check=still_down)
    chat = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
    async with router:
        with pytest.raises(NoTargetAvailable):
            await router.chat(chat)  # both fail once: both ejected
        clock.advance(60.0)  # long past the ejections: only a probe can bring them back
        with pytest.raises(NoTargetAvailable) as refused:
            await router.chat(chat)
    assert refused.value.retry_after is not None and refused.value.retry_after >= 1.0
    assert len(transport.sent) == 2  # and no client request went to either while they were out
