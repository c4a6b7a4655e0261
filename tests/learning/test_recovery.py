"""A provider back from an outage of any length carries traffic again within 10 s, on virtual time.

R (tier 0) refuses connections for an outage, S (tier 1) is always fine; 5 requests a second.
With default settings R costs at most one client request per `max_ejection_s` while it is down;
with `health_probe` it costs none after the failures that ejected it (the probes find out).
The old default (`max_ejection_s: 30`) is the control: it can take up to 30 s. Where in its
ejection cycle a provider recovers is chance, so the bound is checked for outages ending at six
points 5.7 s apart (about one 30 s cycle of the old cap, and out of step with a 5 s probe interval).
"""

from __future__ import annotations

import asyncio

import pytest

from router.policy.model import Provider
from router.upstream.transport import Outgoing
from tests.learning.scenario import Counting, Served, offer, router_for
from tests.support.virtual_time import Answer, SimTransport, run_virtual

pytestmark = pytest.mark.slow  # six outages per test: ~0.8 s each

START = 20.0
ENDS = [START + 300.0 + 5.7 * k for k in range(6)]  # five minutes down, and a bit more
RATE, DURATION = 5.0, 380.0
POLICY = """
providers:
  r: {base_url: "http://127.0.0.1:9/v1"%s}
  s: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    targets:
      - {provider: r, model: m, priority: 0}
      - {provider: s, model: m, priority: 1}
"""


class Outage:
    def __init__(self, end: float) -> None:
        self.end = end

    def down(self, now: float) -> bool:
        return START <= now < self.end


def scenario(provider_keys: str = "", end: float = ENDS[0]) -> tuple[list[Served], SimTransport, Counting]:
    outage = Outage(end)

    def r(_: Outgoing, now: float) -> Answer:
        return Answer(head_s=0.001, refused=True) if outage.down(now) else Answer(head_s=0.05)

    async def check(provider: Provider) -> bool:
        return not outage.down(asyncio.get_running_loop().time())

    async def main() -> tuple[list[Served], SimTransport, Counting]:
        transport, observer = SimTransport(r=r, s=lambda _o, _n: Answer(head_s=0.05)), Counting()
        async with router_for(POLICY % provider_keys, transport, observer=observer, health_check=check) as router:
            served = await offer(router, rate=RATE, duration=DURATION)
        return served, transport, observer
    return run_virtual(main)


def back_after(served: list[Served], end: float) -> float:
    """Seconds from the end of the outage to the first request R served."""
    return min(s.start for s in served if s.provider == "r" and s.start >= end) - end


def attempts_on_r_while_down(transport: SimTransport, end: float) -> list[float]:
    return [at for at, name in transport.sent if name == "r" and START <= at < end]


def test_with_default_settings_a_recovered_provider_is_back_within_10_s() -> None:
    backs = []
    for end in ENDS:
        served, transport, _ = scenario(end=end)
        assert all(s.provider is not None for s in served)
        backs.append(back_after(served, end))
        # The attempts that ejected it (consecutive_failures, 5, with their retries), then one per ejection.
        assert len(attempts_on_r_while_down(transport, end)) <= 10 + (end - START) / 8.0
    print(f"defaults: back {min(backs):.2f}-{max(backs):.2f} s after recovering")
    assert max(backs) <= 10.0


def test_the_old_30_s_cap_is_the_control() -> None:
    backs = [back_after(scenario(", breaker: {max_ejection_s: 30}", end)[0], end) for end in ENDS]
    print(f"max_ejection_s 30: back {min(backs):.2f}-{max(backs):.2f} s after recovering")
    assert max(backs) > 20.0


def test_with_probes_no_client_request_goes_to_a_down_provider_and_it_is_back_within_one_interval() -> None:
    backs = []
    for end in ENDS:
        served, transport, observer = scenario(", health_probe: {interval_s: 5}", end)
        assert all(s.provider is not None for s in served)
        backs.append(back_after(served, end))
        while_down = attempts_on_r_while_down(transport, end)
        assert [at for at in while_down if at > while_down[0] + 1.0] == []  # none after those that ejected it
        assert observer.probes[-1] == ("r", True)
        failed_probes = [p for p in observer.probes if not p[1]]
        assert len(failed_probes) <= (end - START) / 5.0 + 1  # one per interval
    print(f"probes: back {min(backs):.2f}-{max(backs):.2f} s after recovering")
    assert max(backs) <= 5.0 + 0.5
