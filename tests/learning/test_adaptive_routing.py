"""`strategy: adaptive` under the issue's acceptance scenario, through the real Router on virtual time.

Two providers in one tier: A answers in 50 ms, B in 500 ms. Once warm, at least 90% of requests go
to A; when A slows to 1 s, most traffic is on B within 5 s; when A is fast again, it gets most
traffic back within 15 s. `weighted` on the same load is the control: it must miss the first target,
or the scenario could not tell the strategies apart.
"""

from __future__ import annotations

from router.upstream.transport import Outgoing
from tests.learning.scenario import Served, first_majority, offer, router_for, share
from tests.support.virtual_time import Answer, SimTransport, run_virtual

WARM_S, SLOW_S, FAST_AGAIN_S = 30.0, 15.0, 30.0
RATE = 20.0

POLICY = """
providers:
  a: {base_url: "http://127.0.0.1:9/v1"}
  b: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    strategy: %s
    targets:
      - {provider: a, model: m}
      - {provider: b, model: m}
"""


def a_latency(_: Outgoing, now: float) -> Answer:
    slow = WARM_S <= now < WARM_S + SLOW_S
    return Answer(head_s=1.0 if slow else 0.05)


def b_latency(_: Outgoing, now: float) -> Answer:
    return Answer(head_s=0.5)


def scenario(strategy: str) -> list[Served]:
    async def main() -> list[Served]:
        transport = SimTransport(a=a_latency, b=b_latency)
        async with router_for(POLICY % strategy, transport) as router:
            return await offer(router, rate=RATE, duration=WARM_S + SLOW_S + FAST_AGAIN_S)
    return run_virtual(main)


def test_adaptive_sends_most_traffic_to_the_fast_target_follows_a_slowdown_and_a_recovery() -> None:
    served = scenario("adaptive")
    assert all(s.provider is not None for s in served)
    warm = share(served, "a", 5.0, WARM_S)
    to_b = first_majority(served, "b", WARM_S)
    back_to_a = first_majority(served, "a", WARM_S + SLOW_S)
    print(f"adaptive: A's share warm {warm:.3f}; B has most traffic {to_b} s after A slows; "
          f"A has it back {back_to_a} s after it recovers")
    assert warm >= 0.90
    assert to_b is not None and to_b <= 5.0
    assert share(served, "b", WARM_S + 5.0, WARM_S + SLOW_S) > 0.5  # and keeps it while A is slow
    assert back_to_a is not None and back_to_a <= 15.0
    assert share(served, "b", 5.0, WARM_S) > 0.0  # exploration keeps B's estimate fresh


def test_weighted_on_the_same_load_splits_evenly_whatever_the_latency() -> None:
    served = scenario("weighted")
    assert 0.4 <= share(served, "a", 5.0, WARM_S) <= 0.6
    assert 0.4 <= share(served, "a", WARM_S, WARM_S + SLOW_S) <= 0.6
