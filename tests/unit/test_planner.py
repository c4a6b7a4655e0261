"""Failover planning (pure): tiers, weights, same-target retry, waits for throttled targets, give-ups."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

import pytest

from router.engine.backoff import full_jitter
from router.engine.classify import Action, Reason, Verdict
from router.engine.planner import GiveUp, Go, Progress, plan
from router.health.view import READY, Availability, Status
from router.policy.model import RetryPolicy, Strategy, Target

T0 = 1000.0
A = Target("a", "model-a", priority=0)
B = Target("b", "model-b", priority=0)
C = Target("c", "model-c", priority=1)
D = Target("d", "model-d", priority=2)

SERVER_ERROR = Verdict(Action.RETRY, Reason.SERVER_ERROR, status=500, breaker_failure=True)
RATE_LIMITED = Verdict(Action.RETRY, Reason.RATE_LIMITED, status=429, throttle=True, retry_after=3.0)
FIRST_BYTE = Verdict(Action.FAILOVER, Reason.FIRST_BYTE_TIMEOUT, breaker_failure=True)


class FakeView:
    """Health as the planner sees it: READY unless told otherwise."""

    def __init__(self, states: dict[Target, Availability] | None = None,
                 inflight: dict[Target, int] | None = None) -> None:
        self.states = {t.key: a for t, a in (states or {}).items()}
        self.counts = {t.key: n for t, n in (inflight or {}).items()}

    def availability(self, target: Target, now: float, tokens: int) -> Availability:
        return self.states.get(target.key, READY)

    def inflight(self, target: Target) -> int:
        return self.counts.get(target.key, 0)


def throttled(free_at: float) -> Availability:
    return Availability(Status.THROTTLED, free_at=free_at)


def opened(last_failure: float) -> Availability:
    return Availability(Status.OPEN, last_failure=last_failure)


def after(*attempts: tuple[Target, Verdict], excluded: Sequence[Target] = (),
          excluded_models: Sequence[str] = ()) -> Progress:
    """The progress of a request that made `attempts` (target, verdict) in order."""
    progress = Progress()
    for target, verdict in attempts:
        progress.attempts += 1
        progress.per_target[target.key] = progress.tried(target) + 1
        progress.last, progress.last_verdict = target, verdict
    progress.excluded.update(t.key for t in excluded)
    progress.excluded_models.update(excluded_models)
    return progress


def decide(tiers: Sequence[Sequence[Target]], progress: Progress | None = None, *,
           view: FakeView | None = None, now: float = T0, deadline: float = T0 + 60,
           retry: RetryPolicy | None = None, strategy: Strategy = "weighted",
           rng: random.Random | None = None, requested_model: str = "chat") -> Go | GiveUp:
    return plan(tiers, progress or Progress(), requested_model=requested_model, now=now, deadline=deadline,
                tokens=100, retry=retry or RetryPolicy(), strategy=strategy, view=view or FakeView(),
                rng=rng or random.Random(1))


# --- first attempt -----------------------------------------------------------------------------

def test_first_attempt_picks_the_first_tier_at_once() -> None:
    assert decide([[A], [C]]) == Go(A, 0.0, "first")


def test_first_attempt_skips_an_empty_higher_tier() -> None:
    assert decide([[], [C]]) == Go(C, 0.0, "first")


def test_weighted_split_follows_the_weights() -> None:
    heavy, light = Target("a", "m", weight=3.0), Target("b", "m", weight=1.0)
    rng = random.Random(1)
    picks = Counter(decide([[heavy, light]], rng=rng).target.provider for _ in range(4000))  # type: ignore[union-attr]
    assert picks["a"] / 4000 == pytest.approx(0.75, abs=0.03)


def test_weighted_split_with_equal_weights_uses_every_target() -> None:
    targets = [Target(p, "m") for p in "abcd"]
    rng = random.Random(2)
    picks = Counter(decide([targets], rng=rng).target.provider for _ in range(2000))  # type: ignore[union-attr]
    assert set(picks) == set("abcd")
    assert all(400 < n < 600 for n in picks.values())


def test_weighted_choice_is_reproducible_with_the_same_seed() -> None:
    targets = [Target(p, "m") for p in "abcd"]

    def run(seed: int) -> list[Go | GiveUp]:
        rng = random.Random(seed)
        return [decide([targets], rng=rng) for _ in range(20)]

    assert run(9) == run(9)
    assert run(9) != run(10)


def test_least_busy_picks_fewest_in_flight_per_weight() -> None:
    big, small = Target("a", "m", weight=4.0), Target("b", "m", weight=1.0)
    view = FakeView(inflight={big: 6, small: 2})  # 1.5 vs 2.0 per unit of weight
    for seed in range(20):
        assert decide([[big, small]], view=view, strategy="least_busy", rng=random.Random(seed)).target == big  # type: ignore[union-attr]
    view = FakeView(inflight={big: 10, small: 2})  # 2.5 vs 2.0
    assert decide([[big, small]], view=view, strategy="least_busy").target == small  # type: ignore[union-attr]


def test_least_busy_breaks_ties_at_random() -> None:
    rng = random.Random(3)
    picks = Counter(decide([[A, B]], strategy="least_busy", rng=rng).target for _ in range(200))  # type: ignore[union-attr]
    assert picks[A] > 50 and picks[B] > 50


# --- same-target retry -------------------------------------------------------------------------

@pytest.mark.parametrize("tried", [1, 2, 3])
def test_retry_verdict_retries_the_same_target_after_jittered_backoff(tried: int) -> None:
    retry = RetryPolicy(max_attempts=10, max_attempts_per_target=5, base_interval_s=0.25, max_interval_s=8)
    progress = after(*[(A, SERVER_ERROR)] * tried)
    decision = decide([[A, B]], progress, retry=retry, rng=random.Random(4))
    assert isinstance(decision, Go)
    assert decision.target == A and decision.kind == "retry" and not decision.forced
    assert decision.delay == full_jitter(tried, 0.25, 8, random.Random(4))
    assert 0.0 <= decision.delay <= 0.25 * 2 ** (tried - 1)


def test_backoff_delays_are_bounded_over_many_seeds() -> None:
    retry = RetryPolicy(max_attempts=10, max_attempts_per_target=5, base_interval_s=0.5, max_interval_s=1.5)
    for seed in range(200):
        decision = decide([[A]], after(*[(A, SERVER_ERROR)] * 3), retry=retry, rng=random.Random(seed))
        assert isinstance(decision, Go)
        assert 0.0 <= decision.delay <= 1.5  # 0.5 * 4 = 2.0, capped


def test_per_target_cap_fails_over_immediately() -> None:
    retry = RetryPolicy(max_attempts=5, max_attempts_per_target=2)
    decision = decide([[A], [C]], after((A, SERVER_ERROR), (A, SERVER_ERROR)), retry=retry)
    assert decision == Go(C, 0.0, "failover")


def test_failover_verdict_switches_without_delay() -> None:
    progress = after((A, FIRST_BYTE), excluded=[A])  # the engine excludes a FAILOVER target
    assert decide([[A], [C]], progress) == Go(C, 0.0, "failover")


def test_retry_prefers_the_same_target_over_another_in_its_tier() -> None:
    for seed in range(20):
        decision = decide([[A, B]], after((A, SERVER_ERROR)), rng=random.Random(seed))
        assert isinstance(decision, Go) and decision.target == A


def test_backoff_that_would_overrun_the_deadline_switches_target_instead() -> None:
    retry = RetryPolicy(max_attempts=5, base_interval_s=4.0, max_interval_s=4.0)
    rng = random.Random(1)
    assert rng.uniform(0, 4.0) > 0.1  # the backoff drawn below is longer than the time left
    decision = decide([[A], [C]], after((A, SERVER_ERROR)), retry=retry, deadline=T0 + 0.1,
                      rng=random.Random(1))
    assert decision == Go(C, 0.0, "failover")


def test_retry_of_a_now_open_target_is_not_attempted_when_another_is_ready() -> None:
    view = FakeView({A: opened(T0)})
    assert decide([[A], [C]], after((A, SERVER_ERROR)), view=view) == Go(C, 0.0, "failover")


def test_forced_retry_of_the_same_open_target_still_backs_off() -> None:
    # Single-target route whose breaker opened on this request's 500: it is still tried
    # (never eject every target), but a same-target retry must wait its backoff.
    retry = RetryPolicy(max_attempts=3, max_attempts_per_target=3, base_interval_s=1.0)
    view = FakeView({A: opened(T0)})
    decision = decide([[A]], after((A, SERVER_ERROR)), view=view, retry=retry, rng=random.Random(1))
    assert isinstance(decision, Go) and decision.forced and decision.target == A
    assert decision.delay == full_jitter(1, 1.0, retry.max_interval_s, random.Random(1))


# --- bounds ------------------------------------------------------------------------------------

def test_max_attempts_gives_up() -> None:
    retry = RetryPolicy(max_attempts=2, max_attempts_per_target=5)
    assert decide([[A, B]], after((A, SERVER_ERROR), (A, SERVER_ERROR)), retry=retry) == GiveUp("max_attempts")


def test_past_the_deadline_gives_up() -> None:
    assert decide([[A]], now=T0 + 60, deadline=T0 + 60) == GiveUp("deadline")
    assert decide([[A]], after((A, SERVER_ERROR)), now=T0 + 61, deadline=T0 + 60) == GiveUp("deadline")


def test_everything_excluded_is_exhausted() -> None:
    progress = after((A, FIRST_BYTE), excluded=[A, C])
    assert decide([[A], [C]], progress) == GiveUp("exhausted")


# --- throttled and quota-empty targets ---------------------------------------------------------

def test_throttled_preferred_target_is_waited_for_within_wait_for_preferred() -> None:
    view = FakeView({A: throttled(T0 + 3.0)})
    decision = decide([[A], [C]], after((A, RATE_LIMITED)), view=view)
    assert decision == Go(A, 3.0, "wait")


def test_new_request_waits_for_a_throttled_preferred_target_too() -> None:
    view = FakeView({A: throttled(T0 + 1.5)})
    assert decide([[A], [C]], view=view) == Go(A, 1.5, "wait")


def test_wait_is_for_the_soonest_free_target_of_the_tier() -> None:
    view = FakeView({A: throttled(T0 + 4.0), B: throttled(T0 + 2.0)})
    assert decide([[A, B], [C]], view=view) == Go(B, 2.0, "wait")


def test_quota_empty_target_is_waited_for_like_a_throttled_one() -> None:
    view = FakeView({A: Availability(Status.QUOTA, free_at=T0 + 0.5)})
    assert decide([[A], [C]], view=view) == Go(A, 0.5, "wait")


def test_ready_target_in_the_same_tier_beats_waiting() -> None:
    view = FakeView({A: throttled(T0 + 1.0)})
    assert decide([[A, B], [C]], view=view) == Go(B, 0.0, "first")


def test_throttled_beyond_wait_for_preferred_fails_over_to_the_next_tier() -> None:
    view = FakeView({A: throttled(T0 + 30.0)})
    assert decide([[A], [C]], after((A, RATE_LIMITED)), view=view) == Go(C, 0.0, "failover")


def test_throttled_past_the_deadline_is_not_waited_for() -> None:
    view = FakeView({A: throttled(T0 + 3.0)})
    assert decide([[A], [C]], view=view, deadline=T0 + 2.0) == Go(C, 0.0, "first")


def test_wait_for_preferred_zero_always_fails_over_at_once() -> None:
    view = FakeView({A: throttled(T0 + 0.01)})
    retry = RetryPolicy(wait_for_preferred_s=0.0)
    assert decide([[A], [C]], view=view, retry=retry) == Go(C, 0.0, "first")


def test_next_tier_is_waited_for_before_an_even_lower_ready_tier() -> None:
    view = FakeView({A: throttled(T0 + 30.0), C: throttled(T0 + 2.0)})
    assert decide([[A], [C], [D]], view=view) == Go(C, 2.0, "wait")


def test_nothing_left_but_throttled_gives_up_with_the_soonest_retry_after() -> None:
    view = FakeView({A: throttled(T0 + 30.0), C: throttled(T0 + 12.0)})
    decision = decide([[A], [C]], after((A, RATE_LIMITED)), view=view)
    assert decision == GiveUp("throttled", retry_after=12.0)


def test_throttled_until_after_the_deadline_gives_up_as_throttled() -> None:
    view = FakeView({A: throttled(T0 + 3.0)})
    assert decide([[A]], view=view, deadline=T0 + 1.0) == GiveUp("throttled", retry_after=3.0)


# --- open breakers -----------------------------------------------------------------------------

def test_open_target_is_skipped_when_another_is_ready() -> None:
    view = FakeView({A: opened(T0 - 1)})
    assert decide([[A], [C]], view=view) == Go(C, 0.0, "first")


def test_all_open_tries_the_least_recently_failed_target() -> None:
    view = FakeView({A: opened(T0 - 1), B: opened(T0 - 9), C: opened(T0 - 5)})
    assert decide([[A, B], [C]], view=view) == Go(B, 0.0, "first", forced=True)


def test_open_target_is_preferred_to_giving_up_on_throttled_ones() -> None:
    view = FakeView({A: throttled(T0 + 60), C: opened(T0 - 1)})
    assert decide([[A], [C]], view=view) == Go(C, 0.0, "first", forced=True)


# --- exclusions --------------------------------------------------------------------------------

def test_excluded_targets_are_never_chosen() -> None:
    progress = after((B, FIRST_BYTE), excluded=[A, B])
    for seed in range(20):
        assert decide([[A, B], [C]], progress, rng=random.Random(seed)) == Go(C, 0.0, "failover")


def test_excluded_model_rules_out_every_target_serving_it() -> None:
    same_model_elsewhere = Target("b", "model-a", priority=1)
    context = Verdict(Action.FAILOVER, Reason.CONTEXT_LENGTH, status=400, exclude_model=True)
    progress = after((A, context), excluded=[A], excluded_models=["model-a"])
    assert decide([[A], [same_model_elsewhere], [C]], progress) == Go(C, 0.0, "failover")


def test_excluded_model_applies_to_placeholder_targets_by_requested_name() -> None:
    forward = Target("a", "{model}")
    other = Target("b", "fixed", priority=1)
    progress = Progress(excluded_models={"acme:big-model"})
    assert decide([[forward], [other]], progress, requested_model="acme:big-model") == Go(other, 0.0, "first")
    assert decide([[forward], [other]], progress, requested_model="acme:small") == Go(forward, 0.0, "first")


# --- continuation tiers ------------------------------------------------------------------------

def test_same_target_retry_respects_narrowed_continuation_tiers() -> None:
    cut = Verdict(Action.RETRY, Reason.STREAM_CUT, breaker_failure=True)
    progress = after((A, cut))
    # A does not accept a prefill: the continuation plan holds only C, so A is not retried.
    assert decide([[C]], progress) == Go(C, 0.0, "failover")


def test_same_target_retry_applies_when_the_target_is_in_the_continuation_tiers() -> None:
    cut = Verdict(Action.RETRY, Reason.STREAM_CUT, breaker_failure=True)
    decision = decide([[A], [C]], after((A, cut)), rng=random.Random(2))
    assert isinstance(decision, Go)
    assert decision.target == A and decision.kind == "retry"
