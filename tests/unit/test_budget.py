"""Retry budget: retries <= percent of recent requests + min_per_second * window, over a sliding window."""

from __future__ import annotations

import pytest

from router.health.retry_budget import RetryBudgetTracker
from router.policy.model import RetryBudget

T0 = 1000.0


def spend_all(tracker: RetryBudgetTracker, now: float, limit: int = 10_000) -> int:
    spent = 0
    while spent < limit and tracker.try_spend(now):
        spent += 1
    return spent


def test_floor_allows_min_per_second_times_window_without_any_requests() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=20, min_per_second=5, window_s=10))
    assert spend_all(tracker, T0) == 50


def test_zero_floor_and_no_requests_allows_no_retry() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=20, min_per_second=0, window_s=10))
    assert not tracker.try_spend(T0)


def test_percent_of_recent_requests_adds_to_the_floor() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=20, min_per_second=0.5, window_s=10))
    for _ in range(100):
        tracker.record_request(T0)
    assert spend_all(tracker, T0) == 20 + 5


def test_requests_spread_over_the_window_all_count() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=10, min_per_second=0, window_s=10))
    for second in range(10):
        for _ in range(10):
            tracker.record_request(T0 + second + 0.5)
    assert spend_all(tracker, T0 + 9.9) == 10


def test_exhausted_budget_refuses_further_retries() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=50, min_per_second=0, window_s=10))
    for _ in range(4):
        tracker.record_request(T0)
    assert tracker.try_spend(T0)
    assert tracker.try_spend(T0)
    assert not tracker.try_spend(T0)
    assert not tracker.try_spend(T0 + 1)


def test_refused_retries_are_not_counted_as_spent() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=50, min_per_second=0, window_s=10))
    for _ in range(2):
        tracker.record_request(T0)
    assert tracker.try_spend(T0)
    for _ in range(10):
        assert not tracker.try_spend(T0)
    for _ in range(2):
        tracker.record_request(T0)
    assert tracker.try_spend(T0)  # one more allowed: the refusals left no debt


def test_new_requests_renew_an_exhausted_budget() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=20, min_per_second=0, window_s=10))
    for _ in range(10):
        tracker.record_request(T0)
    assert spend_all(tracker, T0) == 2
    for _ in range(10):
        tracker.record_request(T0 + 1)
    assert spend_all(tracker, T0 + 1) == 2


def test_old_requests_age_out_of_the_window() -> None:
    policy = RetryBudget(percent=100, min_per_second=0, window_s=10)
    checked_inside, checked_after = RetryBudgetTracker(policy), RetryBudgetTracker(policy)
    for tracker in (checked_inside, checked_after):
        for _ in range(5):
            tracker.record_request(T0)
    assert spend_all(checked_inside, T0 + 9.9) == 5
    assert spend_all(checked_after, T0 + 10.0) == 0


def test_budget_recovers_when_spent_retries_age_out() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=20, min_per_second=0.3, window_s=10))
    assert spend_all(tracker, T0) == 3
    assert not tracker.try_spend(T0 + 5)
    assert not tracker.try_spend(T0 + 9.99)
    assert spend_all(tracker, T0 + 10) == 3


def test_sliding_window_counts_only_the_last_window_seconds() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=0, min_per_second=0.2, window_s=10))  # floor 2
    assert tracker.try_spend(T0)
    assert tracker.try_spend(T0 + 6)
    assert not tracker.try_spend(T0 + 9)
    assert tracker.try_spend(T0 + 10)  # the retry at T0 has aged out, the one at T0+6 has not
    assert not tracker.try_spend(T0 + 15)
    assert tracker.try_spend(T0 + 16)


def test_slots_reused_after_a_long_idle_period_start_empty() -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=100, min_per_second=0, window_s=10))
    for _ in range(50):
        tracker.record_request(T0)
    later = T0 + 1000  # same slot index (1000 % 10 == 0), a different second
    assert spend_all(tracker, later) == 0
    tracker.record_request(later)
    assert spend_all(tracker, later) == 1


@pytest.mark.parametrize("window_s", [0.5, 1.0, 2.5, 60.0])
def test_floor_scales_with_the_window(window_s: float) -> None:
    tracker = RetryBudgetTracker(RetryBudget(percent=0, min_per_second=4, window_s=window_s))
    assert spend_all(tracker, T0) == int(4 * window_s)


def test_outage_adds_at_most_percent_plus_floor_extra_load() -> None:
    """Steady 100 requests/s for a minute, every request wanting to retry: retries stay bounded."""
    policy = RetryBudget(percent=20, min_per_second=5, window_s=10)
    tracker = RetryBudgetTracker(policy)
    retries = 0
    for second in range(60):
        for i in range(100):
            now = T0 + second + i / 100
            tracker.record_request(now)
            retries += tracker.try_spend(now)
    # Over any window of 10 s: at most 20% of 1000 requests + 50.
    assert retries <= 6 * (200 + 50)
    assert retries >= 6 * 200  # and the allowance is actually used
