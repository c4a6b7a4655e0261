"""The simulated wire under the real transport: the router's own timeouts, slots and throttles apply to it.

Each scenario runs `simulate` (virtual time, the policy's real Router) and checks what the requests
got against what the policy's settings say must happen.
"""

from __future__ import annotations

import math

import pytest

from router.policy import parse_policy
from router.policy.model import Policy
from router.sim.driver import FAILED, Outcomes
from router.sim.profile import parse_profile
from router.sim.simulate import simulate, simulation_policy

POLICY = """
providers:
  p:
    base_url: http://p.test/v1
    timeouts: {{connect_s: 1, first_byte_s: 4, idle_s: 3}}
    {p_extra}
  q:
    base_url: http://q.test/v1
    {q_extra}
routes:
  chat:
    targets: [{{provider: p, model: m}}, {{provider: q, model: m, priority: 1}}]
    {route_extra}
"""


def policy(p_extra: str = "", q_extra: str = "", route_extra: str = "") -> Policy:
    return simulation_policy(parse_policy(POLICY.format(p_extra=p_extra, q_extra=q_extra,
                                                        route_extra=route_extra)))[0]


def run(profile: str, the_policy: Policy, *, requests: int) -> Outcomes:
    return simulate(the_policy, parse_profile(profile), requests=requests)


def latencies(outcomes: Outcomes) -> list[float]:
    return [value for value in outcomes.latency if not math.isnan(value)]


def test_a_silent_provider_costs_first_byte_s_then_its_breaker_keeps_requests_away() -> None:
    outcomes = run("duration_s: 60\nrate_per_s: 1\nproviders:\n  p: {outages: [{start_s: 0, end_s: 1000, "
                   "kind: silent}]}\n  q: {latency_s: {p50: 0.1, p99: 0.1}}\n", policy(), requests=60)
    assert set(outcomes.served) == {1}  # q answered every request
    slow = [at for at, value in zip(outcomes.schedule.arrivals, outcomes.latency, strict=True) if value > 1]
    assert all(value == pytest.approx(4.1) for value in latencies(outcomes) if value > 1)  # first_byte_s, then q
    assert outcomes.decisions["p"]["outage_silent"] == len(slow)
    # Until the 5th timeout (4 s after its attempt) ejects p, every request tries it; after that one trial per
    # ejection, which lasts 5 s, then 8 s (max_ejection_s).
    late = [at for at in slow if at > 15]
    assert 0 < len(late) <= (outcomes.schedule.arrivals[-1] - 15) / 5


def test_a_silent_provider_fills_its_connection_slots_and_then_costs_connect_s() -> None:
    outcomes = run("duration_s: 5\nrate_per_s: 20\nproviders:\n  p: {outages: [{start_s: 0, end_s: 1000, "
                   "kind: silent}]}\n",
                   policy(p_extra="max_connections: 2\n    breaker: {consecutive_failures: 1000}",
                          route_extra="retry: {max_attempts_per_target: 1}"), requests=40)
    assert outcomes.provider_attempts["p"] == 2  # only the two that got a slot reached it
    assert set(outcomes.served) == {1}
    values = latencies(outcomes)
    assert values[:2] == [pytest.approx(4.0), pytest.approx(4.0)]  # first_byte_s in a slot, then q (instant)
    assert all(value == pytest.approx(1.0) for value in values[2:])  # connect_s waiting for a slot, then q


@pytest.mark.parametrize(("prefill", "served"), [(True, {1}), (False, {FAILED})])
def test_a_stalled_stream_waits_idle_s_then_continues_on_a_prefill_target_or_fails(prefill: bool,
                                                                                  served: set[int]) -> None:
    outcomes = run("duration_s: 5\nrate_per_s: 1\nstream_percent: 100\nproviders:\n  p: {stall_percent: 100}\n",
                   policy(q_extra=f"supports_prefill: {str(prefill).lower()}"), requests=3)
    assert set(outcomes.served) == served
    assert outcomes.decisions["p"] == {"stall": 3}
    if prefill:
        assert outcomes.provider_attempts["q"] == 3 and list(outcomes.attempts) == [2, 2, 2]
    else:
        assert outcomes.failures == {"stream_stall": 3}
    assert outcomes.end_s >= 3.0  # idle_s of virtual time went by


def test_a_429_with_retry_after_throttles_the_provider_until_then() -> None:
    outcomes = run("duration_s: 60\nrate_per_s: 10\nproviders:\n  p: {limit_per_min: 5}\n",
                   policy(route_extra="retry: {wait_for_preferred_s: 0}"), requests=100)
    assert set(outcomes.served) <= {0, 1} and FAILED not in set(outcomes.served)
    # After the limit's 429 (Retry-After: until a slot frees), p gets no attempt before it is free again.
    assert outcomes.decisions["p"]["limit_429"] <= 2
    assert outcomes.decisions["p"]["ok"] == 5


def test_503_answers_are_retried_with_backoff_then_failed_over() -> None:
    outcomes = run("duration_s: 5\nrate_per_s: 1\nproviders:\n  p: {errors: {503: 1.0}}\n",
                   policy(p_extra="breaker: {consecutive_failures: 1000}"), requests=5)
    assert list(outcomes.attempts) == [3] * 5  # p, p again after backoff (max_attempts_per_target 2), then q
    assert set(outcomes.served) == {1}
    assert outcomes.decisions["p"] == {"error_503": 10}


def test_providers_not_in_the_profile_answer_at_once() -> None:
    outcomes = run("duration_s: 5\nrate_per_s: 2\nstream_percent: 50\n", policy(), requests=10)
    assert set(outcomes.served) == {0} and set(latencies(outcomes)) == {0.0}
    assert outcomes.decisions == {"p": {"ok": 10}, "q": {}}
