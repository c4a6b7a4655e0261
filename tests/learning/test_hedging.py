"""First-token hedging under the issue's acceptance scenario, on virtual time, and its bounds.

The primary takes 10 s to the first event on 10% of streams and 100 ms otherwise; the backup takes
200 ms. With `hedge: {after_s: 1}` the p99 time to first event is at most 1.5 s (about 10 s
without), upstream attempts are at most 1.12x the requests, and every loser's upstream
connection is closed the moment the winner reaches its first event.
"""

from __future__ import annotations

import random

from router.upstream.transport import Outgoing
from tests.learning.scenario import Counting, Served, offer, quantile, router_for
from tests.support.virtual_time import Answer, SimTransport, run_virtual

POLICY = """
providers:
  h1: {base_url: "http://127.0.0.1:9/v1"}
  h2: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
%s
    targets:
      - {provider: h1, model: m, priority: 0}
      - {provider: h2, model: m, priority: 1}
"""
HEDGED = "    hedge: {after_s: 1.0, max_percent: 15}"


def scenario(route_keys: str, *, stream: bool = True, rate: float = 10.0, duration: float = 60.0,
             fast_s: tuple[float, float] = (0.1, 0.1)) -> tuple[list[Served], SimTransport, Counting]:
    draw = random.Random(3)

    def primary(_: Outgoing, now: float) -> Answer:
        start = 10.0 if draw.random() < 0.10 else draw.uniform(*fast_s)
        return Answer(head_s=0.01, first_event_s=start) if stream else Answer(head_s=start)

    def backup(_: Outgoing, now: float) -> Answer:
        return Answer(head_s=0.01, first_event_s=0.2) if stream else Answer(head_s=0.2)

    async def main() -> tuple[list[Served], SimTransport, Counting]:
        transport, observer = SimTransport(h1=primary, h2=backup), Counting()
        async with router_for(POLICY % route_keys, transport, observer=observer) as router:
            served = await offer(router, rate=rate, duration=duration, stream=stream)
        return served, transport, observer
    return run_virtual(main)


def test_hedging_bounds_the_time_to_first_event_of_a_sometimes_slow_primary() -> None:
    served, transport, observer = scenario(HEDGED)
    p99 = quantile([s.latency for s in served], 0.99)
    ratio = len(transport.sent) / len(served)
    print(f"hedged streams: p99 time to first event {p99:.3f} s, attempts/request {ratio:.3f}, {observer.hedges}")
    assert all(s.provider is not None for s in served)
    assert p99 <= 1.5
    assert ratio <= 1.12
    assert observer.hedges.get("won", 0) > 0
    # Every reply the router gave up on was closed, at once (virtual time: no later than the winner).
    for provider, reply in transport.replies:
        assert reply.closed_at is not None, provider


def test_without_hedging_the_slow_starts_set_the_p99() -> None:
    served, transport, _ = scenario("    strategy: weighted")
    assert quantile([s.latency for s in served], 0.99) >= 9.0
    assert len(transport.sent) == len(served)


def test_json_answers_are_hedged_on_their_first_byte_too() -> None:
    served, transport, observer = scenario(HEDGED, stream=False)
    assert quantile([s.latency for s in served], 0.99) <= 1.5
    assert len(transport.sent) / len(served) <= 1.12
    assert observer.hedges.get("won", 0) > 0


def test_the_hedge_budget_caps_hedges_at_max_percent_of_recent_requests() -> None:
    served, transport, observer = scenario("    hedge: {after_s: 1.0, max_percent: 3}")
    extra = len(transport.sent) - len(served)
    assert observer.hedges.get("suppressed", 0) > 0
    assert extra <= 0.03 * len(served) + 1


def test_a_quantile_delay_hedges_after_what_the_primary_usually_takes() -> None:
    # h1 usually starts in 50-100 ms: its p95 is ~0.1 s, so slow starts are hedged after that, not 1 s.
    served, transport, _ = scenario("    hedge: {after_quantile: 0.95, max_percent: 25}", fast_s=(0.05, 0.1))
    warm = [s.latency for s in served if s.start >= 5.0]  # before 20 first events: `after_s`, 1 s
    assert max(warm) < 0.5
    assert max(s.latency for s in served) > 1.0
    assert len(transport.sent) / len(served) <= 1.2
