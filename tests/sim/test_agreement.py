"""The simulation agrees with the real router over real HTTP.

One scenario, run twice with the same policy, the same arrival schedule and the same provider
decisions (`ProviderModel`): once by `router simulate`'s machinery on virtual time, once by a
`Router` with its production transport against `HttpFakeProvider`s on 127.0.0.1, in real time
(about 11 s). Two providers in priority order, both answering 503 to 30% of attempts (backoff,
retry, failover and, when all three attempts fail, a failed request); the first also stalls 2% of
its streams (continued on the second, which takes a prefill) and refuses connections for 2 s.
Success rate and attempts per request must agree within 5% (relative).

Random draws happen in a slightly different order in real time, so the two runs are alike in
distribution, not attempt by attempt. Over 20 seeds of the simulation, 2,500 requests give attempts
per request a standard deviation of 0.8% (relative) and the success rate one of 0.4 points: 5% is
more than four standard deviations of the difference of two runs.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from router import Router
from router.policy import parse_policy
from router.sim.driver import Outcomes, offer
from router.sim.http_fake import HttpFakeProvider
from router.sim.profile import parse_profile
from router.sim.provider import ProviderModel
from router.sim.report import build_report
from router.sim.simulate import schedule_for, simulate, simulation_policy

SEED = 3
FAULTS = """
duration_s: 10
rate_per_s: 250
stream_percent: 50
providers:
  p:
    latency_s: {p50: 0.02, p99: 0.1}
    errors: {503: 0.3}
    stall_percent: 2
    outages: [{start_s: 3, end_s: 5, kind: refused}]
  q:
    latency_s: {p50: 0.03, p99: 0.12}
    errors: {503: 0.3}
"""
POLICY = """
providers:
  p:
    base_url: {p}
    timeouts: {{connect_s: 1, first_byte_s: 2, idle_s: 0.5}}
    breaker: {{consecutive_failures: 5, base_ejection_s: 0.5, max_ejection_s: 1}}
  q:
    base_url: {q}
    timeouts: {{connect_s: 1, first_byte_s: 2, idle_s: 0.5}}
    breaker: {{consecutive_failures: 20}}
    supports_prefill: true
routes:
  chat:
    targets:
      - {{provider: p, model: m, priority: 0}}
      - {{provider: q, model: m, priority: 1}}
    retry: {{base_interval_s: 0.02, max_interval_s: 0.2, wait_for_preferred_s: 0.2}}
    deadline_s: 5
retry_budget: {{percent: 50}}
"""


async def _over_http() -> tuple[Outcomes, str]:
    profile = parse_profile(FAULTS)
    fakes = {name: HttpFakeProvider(ProviderModel(name, profile.providers[name], seed=SEED)) for name in ("p", "q")}
    urls = {name: await fake.start() for name, fake in fakes.items()}
    policy_text = POLICY.format(**urls)
    policy, _ = simulation_policy(parse_policy(policy_text))
    try:
        async with Router(policy, rng=random.Random(f"{SEED}:router")) as router:
            origin = asyncio.get_running_loop().time() + 0.05
            for fake in fakes.values():
                fake.origin = origin
            outcomes = await offer(router, schedule_for(profile, seed=SEED), providers=list(policy.providers),
                                   model="chat", origin=origin)
    finally:
        for fake in fakes.values():
            await fake.stop()
    outcomes.provider_attempts = {name: fake.requests for name, fake in fakes.items()}
    outcomes.decisions = {name: dict(fake.model.counts) for name, fake in fakes.items()}
    return outcomes, policy_text


def _figures(outcomes: Outcomes) -> tuple[float, float]:
    report = build_report(outcomes, parse_profile(FAULTS), span_s=10.0, seed=SEED)
    return report.success_rate, report.attempts_per_request


@pytest.mark.slow
def test_simulation_and_real_http_agree_on_success_rate_and_attempts_per_request() -> None:
    real, policy_text = asyncio.run(_over_http())
    policy, _ = simulation_policy(parse_policy(policy_text))
    simulated = simulate(policy, parse_profile(FAULTS), seed=SEED)
    (real_success, real_attempts), (sim_success, sim_attempts) = _figures(real), _figures(simulated)
    print(f"\nover HTTP: success {real_success:.4f}, attempts/request {real_attempts:.4f}, "
          f"provider decisions {real.decisions}")
    print(f"simulated: success {sim_success:.4f}, attempts/request {sim_attempts:.4f}, "
          f"provider decisions {simulated.decisions}")
    assert len(real) == len(simulated) > 2000
    assert sim_success == pytest.approx(real_success, rel=0.05)
    assert sim_attempts == pytest.approx(real_attempts, rel=0.05)
    # The scenario does what it says in both runs: retries, failed requests, stalls, the outage.
    for run, attempts, success in ((real, real_attempts, real_success), (simulated, sim_attempts, sim_success)):
        assert attempts > 1.2 and 0.9 < success < 0.99
        assert run.decisions["p"].get("stall", 0) > 0 and run.decisions["p"].get("outage_refused", 0) > 0
