"""The inputs and the decision of `strategy: adaptive`: `TargetStats` (health/target_stats.py) and the
planner's power-of-two-choices scoring (engine/planner.py), with the time passed in, no sleeping.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest

from router.engine.planner import Go, Progress, adaptive_score, plan
from router.health.target_stats import MIN_QUANTILE_SAMPLES, TargetStats
from router.health.view import READY, Availability
from router.policy.model import AdaptivePolicy, RetryPolicy, Target

HALF = 10.0
A, B, C = Target("a", "m"), Target("b", "m"), Target("c", "m")


# -- TargetStats ----------------------------------------------------------------------------------

def test_a_slower_sample_replaces_the_estimate_at_once() -> None:
    stats = TargetStats()
    stats.succeeded(stream=False, latency=0.05, first_byte=0.05, now=0.0, half_life_s=HALF)
    stats.succeeded(stream=False, latency=1.0, first_byte=1.0, now=0.1, half_life_s=HALF)
    assert stats.latency(stream=False) == 1.0


def test_faster_samples_pull_the_estimate_down_with_a_half_life_in_time() -> None:
    stats = TargetStats()
    stats.succeeded(stream=False, latency=1.0, first_byte=None, now=0.0, half_life_s=HALF)
    stats.succeeded(stream=False, latency=0.0, first_byte=None, now=HALF, half_life_s=HALF)
    assert stats.latency(stream=False) == pytest.approx(0.5)
    # A burst of fast answers within a moment barely moves it: time, not sample count, decides.
    burst = TargetStats()
    burst.succeeded(stream=False, latency=1.0, first_byte=None, now=0.0, half_life_s=HALF)
    for i in range(100):
        burst.succeeded(stream=False, latency=0.0, first_byte=None, now=0.001 * (i + 1), half_life_s=HALF)
    assert burst.latency(stream=False) == pytest.approx(0.5 ** (0.1 / HALF), rel=1e-3)


def test_streams_and_json_are_estimated_apart() -> None:
    stats = TargetStats()
    stats.succeeded(stream=True, latency=0.2, first_byte=0.2, now=0.0, half_life_s=HALF)
    stats.succeeded(stream=False, latency=3.0, first_byte=0.1, now=0.0, half_life_s=HALF)
    assert (stats.latency(stream=True), stats.latency(stream=False)) == (0.2, 3.0)


def test_a_fast_failure_never_makes_a_target_look_fast() -> None:
    stats = TargetStats()
    stats.succeeded(stream=False, latency=0.5, first_byte=None, now=0.0, half_life_s=HALF)
    stats.failed(stream=False, elapsed=0.001, now=1.0, half_life_s=HALF)  # connection refused
    assert stats.latency(stream=False) == 0.5
    assert stats.recent_failures(1.0, HALF) == 1.0
    stats.failed(stream=False, elapsed=30.0, now=2.0, half_life_s=HALF)  # a timeout: at least this slow
    assert stats.latency(stream=False) == 30.0


def test_recent_failures_halve_every_half_life_and_forget_resets_everything() -> None:
    stats = TargetStats()
    for _ in range(4):
        stats.failed(stream=False, elapsed=0.0, now=0.0, half_life_s=HALF)
    assert stats.recent_failures(HALF, HALF) == pytest.approx(2.0)
    stats.succeeded(stream=False, latency=0.3, first_byte=None, now=0.0, half_life_s=HALF)
    stats.forget()
    assert stats.latency(stream=False) is None and stats.recent_failures(0.0, HALF) == 0.0


def test_first_byte_quantile_needs_enough_samples_and_keeps_only_recent_ones() -> None:
    stats = TargetStats()
    for i in range(MIN_QUANTILE_SAMPLES - 1):
        stats.succeeded(stream=True, latency=0.1, first_byte=0.1, now=float(i), half_life_s=HALF)
    assert stats.first_byte_quantile(0.95, stream=True) is None
    stats.succeeded(stream=True, latency=0.1, first_byte=2.0, now=100.0, half_life_s=HALF)
    assert stats.first_byte_quantile(0.5, stream=True) == 0.1
    assert stats.first_byte_quantile(1.0, stream=True) == 2.0
    for i in range(200):  # the ring holds the last 128: the old 2.0 is gone
        stats.succeeded(stream=True, latency=0.3, first_byte=0.3, now=200.0 + i, half_life_s=HALF)
    assert stats.first_byte_quantile(1.0, stream=True) == 0.3
    assert stats.first_byte_quantile(0.5, stream=False) is None


# -- the planner's choice -----------------------------------------------------------------------

class View:
    def __init__(self, latency: dict[str, float | None], inflight: dict[str, int] | None = None,
                 failures: dict[str, float] | None = None) -> None:
        self._latency, self._inflight, self._failures = latency, inflight or {}, failures or {}

    def availability(self, target: Target, now: float, tokens: int) -> Availability:
        return READY

    def inflight(self, target: Target) -> int:
        return self._inflight.get(target.provider, 0)

    def latency(self, target: Target, *, stream: bool) -> float | None:
        return self._latency.get(target.provider)

    def recent_failures(self, target: Target, now: float, half_life_s: float) -> float:
        return self._failures.get(target.provider, 0.0)


DEFAULT = AdaptivePolicy()


def choices(view: View, targets: list[Target], n: int = 2000, policy: AdaptivePolicy = DEFAULT) -> Counter:
    rng = random.Random(5)
    picked: Counter[str] = Counter()
    for _ in range(n):
        decision = plan([targets], Progress(), requested_model="m", now=0.0, deadline=60.0, tokens=1,
                        retry=RetryPolicy(), strategy="adaptive", view=view, rng=rng, adaptive=policy)
        assert isinstance(decision, Go)
        picked[decision.target.provider] += 1
    return picked


def test_the_faster_target_wins_all_but_the_explored_share() -> None:
    picked = choices(View({"a": 0.05, "b": 0.5}), [A, B])
    assert picked["b"] / 2000 == pytest.approx(0.05, abs=0.015)  # explore_percent, to the other one
    assert choices(View({"a": 0.05, "b": 0.5}), [A, B], policy=AdaptivePolicy(explore_percent=0))["b"] == 0


def test_requests_in_flight_and_recent_failures_raise_a_score() -> None:
    view = View({"a": 0.1, "b": 0.3}, inflight={"a": 5})
    assert adaptive_score(A, view, 0.0, False, AdaptivePolicy(), 1.0) == pytest.approx(0.6)
    assert choices(view, [A, B], policy=AdaptivePolicy(explore_percent=0))["b"] == 2000
    failing = View({"a": 0.1, "b": 0.3}, failures={"a": 3.0})
    assert choices(failing, [A, B], policy=AdaptivePolicy(explore_percent=0))["b"] == 2000


def test_weight_divides_the_score() -> None:
    heavy = Target("a", "m", weight=4.0)
    assert adaptive_score(heavy, View({"a": 0.4}), 0.0, False, AdaptivePolicy(), 1.0) == pytest.approx(0.1)


def test_a_target_without_samples_gets_a_fair_trial_as_good_as_the_best_known() -> None:
    # c is new: scored at b's latency, then in-flight counts decide (equal here, so a coin flip).
    picked = choices(View({"b": 0.2, "c": None}), [B, C], policy=AdaptivePolicy(explore_percent=0))
    assert 800 < picked["c"] < 1200
    # With requests already on their way to it, the new target stops taking more.
    busy_new = View({"b": 0.2, "c": None}, inflight={"c": 3})
    assert choices(busy_new, [B, C], policy=AdaptivePolicy(explore_percent=0))["c"] == 0


def test_power_of_two_choices_spreads_over_three_targets_by_score() -> None:
    picked = choices(View({"a": 0.1, "b": 0.2, "c": 5.0}), [A, B, C], policy=AdaptivePolicy(explore_percent=0))
    # c loses every draw it is in, and every draw has another target.
    assert picked["c"] == 0
    assert picked["a"] > picked["b"] > 0  # b wins the draws that leave a out
