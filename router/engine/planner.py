"""Failover planning: which target to try next, and after what delay. Pure.

The planner sees the route's tiers, what this request has already tried, and a
read-only view of shared health (breakers, throttles, quotas, in-flight counts).
It never sleeps and never does I/O; the engine executes its decision.

Rules (docs/architecture.md §4.2 and §4.4):
- after a RETRY verdict, the same target again after full-jitter backoff, at most
  `max_attempts_per_target` times in one request; a switch to another target is
  immediate;
- tiers in priority order; inside a tier, `weighted` random, `least_busy`, or `adaptive`: power of
  two choices scored by moving-average latency x (in flight + 1) x (1 + recent failures) / weight,
  with `explore_percent` of choices going to the other of the two so no estimate goes stale;
- a throttled or quota-empty target is never tried before it frees up; the request
  waits for it only if it frees up within `wait_for_preferred_s` and the deadline,
  otherwise it moves to the next tier; with nothing left: give up as throttled
  (the caller answers 429 with Retry-After);
- a route never has every target ejected: with all candidates behind open
  breakers, the least recently failed one is still tried.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from router.engine.backoff import full_jitter
from router.engine.classify import Action, Verdict
from router.health.view import Availability, Status, TargetView
from router.policy.model import AdaptivePolicy, RetryPolicy, Strategy, Target

_DEFAULT_ADAPTIVE = AdaptivePolicy()


@dataclass(slots=True)
class Progress:
    """What one request has done so far. Owned by the engine, read by the planner."""

    attempts: int = 0
    per_target: dict[str, int] = field(default_factory=dict)
    excluded: set[str] = field(default_factory=set)  # target keys out for this request
    excluded_models: set[str] = field(default_factory=set)  # upstream models that refused the size
    last: Target | None = None
    last_verdict: Verdict | None = None

    def tried(self, target: Target) -> int:
        return self.per_target.get(target.key, 0)


DecisionKind = Literal["first", "retry", "failover", "wait"]


@dataclass(frozen=True, slots=True)
class Go:
    target: Target
    delay: float
    kind: DecisionKind
    forced: bool = False  # admitted although its breaker is open


@dataclass(frozen=True, slots=True)
class GiveUp:
    reason: Literal["max_attempts", "deadline", "exhausted", "throttled", "retry_budget"]
    retry_after: float | None = None


Decision = Go | GiveUp


def plan(tiers: Sequence[Sequence[Target]], progress: Progress, *, requested_model: str, now: float,
         deadline: float, tokens: int, retry: RetryPolicy, strategy: Strategy, view: TargetView,
         rng: random.Random, stream: bool = False, adaptive: AdaptivePolicy = _DEFAULT_ADAPTIVE) -> Decision:
    if progress.attempts >= retry.max_attempts:
        return GiveUp("max_attempts")
    if now >= deadline:
        return GiveUp("deadline")

    last, verdict = progress.last, progress.last_verdict
    skip_last = False
    if last is not None and verdict is not None and verdict.action is Action.RETRY:
        in_plan = any(last in tier for tier in tiers)  # a continuation narrows the tiers
        if (in_plan and _eligible(last, progress, requested_model, retry)
                and view.availability(last, now, tokens).status is Status.READY):
            delay = full_jitter(progress.tried(last), retry.base_interval_s, retry.max_interval_s, rng)
            if now + delay < deadline:
                return Go(last, delay, "retry")
            skip_last = True  # no time to back off: prefer an immediate switch

    soonest_throttled: float | None = None
    open_candidates: list[tuple[Target, Availability]] = []
    for tier in tiers:
        ready: list[Target] = []
        waitable: tuple[float, Target] | None = None
        for target in tier:
            if (skip_last and target == last) or not _eligible(target, progress, requested_model, retry):
                continue
            avail = view.availability(target, now, tokens)
            if avail.status is Status.READY:
                ready.append(target)
            elif avail.status is Status.DRAINED:
                continue  # an operator took it out: never tried, never waited for
            elif avail.status is Status.OPEN:
                if not avail.probed:  # a probed provider comes back through its prober, never forced
                    open_candidates.append((target, avail))
            else:
                if soonest_throttled is None or avail.free_at < soonest_throttled:
                    soonest_throttled = avail.free_at
                if waitable is None or avail.free_at < waitable[0]:
                    waitable = (avail.free_at, target)
        if ready:
            chosen = _adaptive(ready, view, now, stream, adaptive, rng) if strategy == "adaptive" \
                else _choose(ready, strategy, view, rng)
            return Go(chosen, 0.0, _kind(chosen, progress))
        if waitable is not None:
            free_at, target = waitable
            wait = max(0.0, free_at - now)
            if wait <= retry.wait_for_preferred_s and free_at < deadline:
                return Go(target, wait, "wait")

    if open_candidates:
        target, _ = min(open_candidates, key=lambda pair: pair[1].last_failure)
        delay = 0.0
        if target == last and verdict is not None and verdict.action is Action.RETRY:
            # Same target again (every breaker is open): still back off, never hammer it.
            delay = full_jitter(progress.tried(target), retry.base_interval_s, retry.max_interval_s, rng)
            if now + delay >= deadline:
                return GiveUp("deadline")
        return Go(target, delay, _kind(target, progress), forced=True)
    if soonest_throttled is not None:
        return GiveUp("throttled", retry_after=max(0.0, soonest_throttled - now))
    return GiveUp("exhausted")


def _eligible(target: Target, progress: Progress, requested_model: str, retry: RetryPolicy) -> bool:
    if target.key in progress.excluded or progress.tried(target) >= retry.max_attempts_per_target:
        return False
    return not (progress.excluded_models and target.upstream_model(requested_model) in progress.excluded_models)


def _kind(target: Target, progress: Progress) -> DecisionKind:
    if progress.attempts == 0:
        return "first"
    return "retry" if target == progress.last else "failover"


def _choose(ready: list[Target], strategy: Strategy, view: TargetView, rng: random.Random) -> Target:
    if len(ready) == 1:
        return ready[0]
    if strategy == "least_busy":
        # Fewest in flight per unit of weight; random tie-break so equal targets share load.
        best = min(view.inflight(t) / t.weight for t in ready)
        ties = [t for t in ready if view.inflight(t) / t.weight == best]
        return ties[0] if len(ties) == 1 else rng.choice(ties)
    total = sum(t.weight for t in ready)
    pick = rng.random() * total
    for target in ready:
        pick -= target.weight
        if pick < 0:
            return target
    return ready[-1]


def adaptive_score(target: Target, view: TargetView, now: float, stream: bool, policy: AdaptivePolicy,
                   unknown: float) -> float:
    """Lower is better: expected latency x queue ahead x recent-failure penalty, per unit of weight.
    `unknown` stands in for a target with no sample yet (new, or back from an ejection)."""
    latency = view.latency(target, stream=stream)
    penalty = 1.0 + view.recent_failures(target, now, policy.half_life_s)
    return (unknown if latency is None else latency) * (view.inflight(target) + 1) * penalty / target.weight


def _adaptive(ready: list[Target], view: TargetView, now: float, stream: bool, policy: AdaptivePolicy,
              rng: random.Random) -> Target:
    if len(ready) == 1:
        return ready[0]
    first, second = (ready[0], ready[1]) if len(ready) == 2 else rng.sample(ready, 2)
    known = [lat for t in (first, second) if (lat := view.latency(t, stream=stream)) is not None]
    # A target without an estimate gets a fair trial: as good as the better known one, and its
    # in-flight count still limits how many requests it gets before its first answer.
    unknown = min(known) if known else 1.0
    a = adaptive_score(first, view, now, stream, policy, unknown)
    b = adaptive_score(second, view, now, stream, policy, unknown)
    best, other = (first, second) if a < b or (a == b and rng.random() < 0.5) else (second, first)
    if policy.explore_percent and rng.random() * 100.0 < policy.explore_percent:
        return other  # keep the slower one's estimate fresh
    return best
