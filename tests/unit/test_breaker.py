"""Per-target circuit breaker: closed -> open -> half-open with one probe, growing but capped ejection."""

from __future__ import annotations

import pytest

from router.health.breaker import Breaker, BreakerState, Permit
from router.policy.model import BreakerPolicy

T0 = 1000.0
POLICY = BreakerPolicy(consecutive_failures=3, base_ejection_s=5.0, max_ejection_s=30.0)


def fail(breaker: Breaker, now: float, times: int = 1) -> bool:
    opened = False
    for _ in range(times):
        permit = breaker.acquire(now)
        assert permit is not None
        opened = breaker.on_failure(permit, now)
    return opened


def open_breaker(policy: BreakerPolicy = POLICY, now: float = T0) -> Breaker:
    breaker = Breaker(policy)
    assert fail(breaker, now, policy.consecutive_failures)
    return breaker


def fail_probe(breaker: Breaker) -> float:
    """Wait for half-open, fail the probe; returns the time the probe failed."""
    assert breaker.open_until is not None
    now = breaker.open_until
    probe = breaker.acquire(now)
    assert probe is not None and probe.probe
    assert breaker.on_failure(probe, now)
    return now


def test_new_breaker_is_closed_and_admits() -> None:
    breaker = Breaker(POLICY)
    assert breaker.state(T0) is BreakerState.CLOSED
    assert breaker.available(T0)
    assert breaker.acquire(T0) == Permit(probe=False)
    assert breaker.open_until is None


def test_opens_after_consecutive_failures() -> None:
    breaker = Breaker(POLICY)
    assert not fail(breaker, T0, 2)
    assert breaker.state(T0) is BreakerState.CLOSED
    assert fail(breaker, T0)
    assert breaker.state(T0) is BreakerState.OPEN
    assert not breaker.available(T0)
    assert breaker.acquire(T0) is None


def test_a_success_resets_the_failure_count() -> None:
    breaker = Breaker(POLICY)
    fail(breaker, T0, 2)
    permit = breaker.acquire(T0)
    assert permit is not None
    assert breaker.on_success(permit) is False  # it was not open
    assert not fail(breaker, T0, 2)
    assert breaker.state(T0) is BreakerState.CLOSED


def test_neutral_outcomes_like_429_never_open_the_breaker() -> None:
    breaker = Breaker(POLICY)
    for _ in range(50):
        permit = breaker.acquire(T0)
        assert permit is not None
        breaker.on_neutral(permit)
    assert breaker.state(T0) is BreakerState.CLOSED


def test_neutral_outcomes_do_not_reset_the_failure_count() -> None:
    breaker = Breaker(POLICY)
    fail(breaker, T0, 2)
    permit = breaker.acquire(T0)
    assert permit is not None
    breaker.on_neutral(permit)
    assert fail(breaker, T0)


def test_records_the_time_of_the_last_failure() -> None:
    breaker = Breaker(POLICY)
    assert breaker.last_failure == float("-inf")
    fail(breaker, T0 + 3)
    assert breaker.last_failure == T0 + 3


def test_first_ejection_lasts_the_base_time() -> None:
    breaker = open_breaker()
    assert breaker.open_until == T0 + 5.0
    assert breaker.state(T0 + 4.999) is BreakerState.OPEN
    assert breaker.state(T0 + 5.0) is BreakerState.HALF_OPEN


def test_half_open_admits_exactly_one_probe() -> None:
    breaker = open_breaker()
    now = T0 + 5.0
    assert breaker.available(now)
    probe = breaker.acquire(now)
    assert probe == Permit(probe=True)
    assert breaker.state(now) is BreakerState.OPEN  # the probe is out
    assert not breaker.available(now)
    assert breaker.acquire(now) is None
    assert breaker.acquire(now + 100) is None  # until the probe is settled


def test_probe_success_closes_the_breaker() -> None:
    breaker = open_breaker()
    probe = breaker.acquire(T0 + 5)
    assert probe is not None
    assert breaker.on_success(probe) is True
    assert breaker.state(T0 + 5) is BreakerState.CLOSED
    assert breaker.open_until is None
    # ... and resets the count: it takes N new failures to open it again.
    assert not fail(breaker, T0 + 5, 2)
    assert fail(breaker, T0 + 5)
    assert breaker.open_until == T0 + 5 + 5.0  # the base ejection again, not a grown one


def test_probe_failure_reopens_with_a_longer_ejection() -> None:
    breaker = open_breaker()
    failed_at = fail_probe(breaker)
    assert breaker.state(failed_at) is BreakerState.OPEN
    assert breaker.open_until == failed_at + 10.0


def test_ejection_grows_exponentially_and_is_capped() -> None:
    breaker = open_breaker()
    ejections = [5.0]
    for _ in range(5):
        failed_at = fail_probe(breaker)
        assert breaker.open_until is not None
        ejections.append(breaker.open_until - failed_at)
    assert ejections == [5.0, 10.0, 20.0, 30.0, 30.0, 30.0]


def test_recovered_provider_is_back_within_the_cap() -> None:
    breaker = open_breaker()
    for _ in range(20):
        fail_probe(breaker)
    assert breaker.open_until is not None
    recovers_at = breaker.open_until
    probe = breaker.acquire(recovers_at)
    assert probe is not None and probe.probe
    assert breaker.on_success(probe)
    assert breaker.acquire(recovers_at) == Permit(probe=False)


def test_neutral_probe_releases_the_probe_slot() -> None:
    breaker = open_breaker()
    now = T0 + 5
    probe = breaker.acquire(now)
    assert probe is not None
    breaker.on_neutral(probe)
    assert breaker.state(now) is BreakerState.HALF_OPEN
    assert breaker.acquire(now) == Permit(probe=True)


def test_failure_of_an_attempt_admitted_before_opening_does_not_extend_the_ejection() -> None:
    breaker = Breaker(POLICY)
    early = [breaker.acquire(T0) for _ in range(5)]
    for permit in early[:3]:
        assert permit is not None
        breaker.on_failure(permit, T0)
    assert breaker.open_until == T0 + 5
    late = early[3]
    assert late is not None
    assert breaker.on_failure(late, T0 + 1) is False
    assert breaker.open_until == T0 + 5


def test_eject_for_max_keeps_the_target_out_for_the_longest_time() -> None:
    breaker = Breaker(POLICY)
    breaker.eject_for_max(T0)
    assert breaker.open_until == T0 + 30.0
    assert breaker.state(T0 + 29.9) is BreakerState.OPEN
    assert breaker.acquire(T0 + 29.9) is None
    assert breaker.last_failure == T0
    assert breaker.state(T0 + 30.0) is BreakerState.HALF_OPEN


def test_eject_for_max_releases_an_outstanding_probe() -> None:
    breaker = open_breaker()
    probe = breaker.acquire(T0 + 5)
    assert probe is not None
    breaker.eject_for_max(T0 + 5)
    assert breaker.acquire(T0 + 35) == Permit(probe=True)


def test_force_acquire_admits_through_an_open_breaker() -> None:
    breaker = open_breaker()
    assert breaker.acquire(T0) is None
    permit = breaker.force_acquire()
    assert permit.probe is False
    assert breaker.on_failure(permit, T0 + 1) is False
    assert breaker.open_until == T0 + 5  # a forced attempt neither extends nor shortens the ejection


@pytest.mark.parametrize("threshold", [1, 2, 7])
def test_threshold_comes_from_the_policy(threshold: int) -> None:
    policy = BreakerPolicy(consecutive_failures=threshold, base_ejection_s=1.0, max_ejection_s=2.0)
    breaker = Breaker(policy)
    assert not fail(breaker, T0, threshold - 1)
    assert fail(breaker, T0)


# -- ejections learned from other replicas (shared state) ---------------------------------------


def test_adopting_an_ejection_takes_a_closed_target_out_until_then() -> None:
    breaker = Breaker(POLICY)
    assert breaker.adopt_ejection(T0 + 7.0, T0)
    assert not breaker.available(T0 + 6.9)
    assert breaker.state(T0 + 7.0) is BreakerState.HALF_OPEN
    probe = breaker.acquire(T0 + 7.0)
    assert probe is not None and probe.probe  # this replica probes for itself when it ends


def test_adopting_never_shortens_an_ejection_and_reports_no_change_when_already_out() -> None:
    breaker = open_breaker()  # out until T0 + 5
    assert not breaker.adopt_ejection(T0 + 2.0, T0)
    assert breaker.open_until == T0 + 5.0
    assert not breaker.adopt_ejection(T0 + 9.0, T0)  # already out: extended, not newly opened
    assert breaker.open_until == T0 + 9.0


def test_adopted_ejection_does_not_grow_this_replicas_next_ejection() -> None:
    breaker = Breaker(POLICY)
    breaker.adopt_ejection(T0 + 1.0, T0)
    assert fail_probe(breaker) >= T0 + 1.0
    # The failed probe ejects for the base time: growth follows this replica's own failures.
    assert breaker.open_until == pytest.approx(T0 + 1.0 + POLICY.base_ejection_s)
