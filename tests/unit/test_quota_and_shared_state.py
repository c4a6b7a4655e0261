"""Quotas in process (both buckets or neither, 1/N shares) and Ledger adopting shared health."""

from __future__ import annotations

import pytest

from router import Router
from router.errors import PolicyError
from router.health.backends import MemoryBackend
from router.health.ledger import Ledger
from router.health.quota import REQUESTS, TOKENS, MemoryQuota, QuotaSpec, Rate
from router.policy import parse_policy

POLICY = """
version: 1
providers:
  p: {base_url: "http://127.0.0.1:9/v1", limits: {requests_per_minute: 60}}
  q: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    targets: [{provider: p, model: m}, {provider: q, model: m, priority: 1}]
"""


class Recorder(MemoryBackend):
    def __init__(self, share: float = 1.0) -> None:
        super().__init__(share)
        self.published: list[tuple[str, float]] = []

    def publish(self, field: str, seconds: float) -> None:
        self.published.append((field, seconds))


async def test_memory_quota_takes_both_buckets_or_neither() -> None:
    quota = MemoryQuota(QuotaSpec(Rate(10, 0.001), Rate(100, 0.001)))
    assert quota.try_take(60) == (0.0, "")
    wait, kind = quota.try_take(60)
    assert kind == TOKENS and wait > 0
    assert quota.requests is not None and quota.requests.wait_time(9) == 0  # the request was given back


async def test_memory_quota_reports_which_bucket_refused() -> None:
    quota = MemoryQuota(QuotaSpec(Rate(1, 0.001), Rate(100, 0.001)))
    quota.try_take(1)
    assert quota.try_take(1)[1] == REQUESTS


@pytest.mark.parametrize(("share", "capacity", "rate"), [(0.5, 5.0, 0.5), (0.25, 2.5, 0.25), (0.01, 1.0, 0.01)])
def test_a_share_scales_capacity_and_rate_but_keeps_one_request(share: float, capacity: float, rate: float) -> None:
    assert Rate(10, 1.0).share(share) == Rate(capacity, rate)


async def test_a_half_share_admits_half_the_burst() -> None:
    quota = MemoryQuota(QuotaSpec(Rate(10, 0.001), None), share=0.5)
    admitted = sum(1 for _ in range(10) if quota.try_take(1)[0] == 0)
    assert admitted == 5


def test_state_publishes_ejections_and_throttles_to_its_backend() -> None:
    policy = parse_policy(POLICY)
    backend = Recorder()
    state = Ledger(policy, backend=backend)
    target = policy.routes["chat"].targets[0]
    state.ejected(target, until=105.0, now=100.0)
    state.throttle("p", until=102.5, now=100.0)
    assert backend.published == [(f"eject:{target.key}", 5.0), ("throttle:p", 2.5)]
    assert state.provider("p").throttled_until == 102.5


def test_state_adopts_what_other_replicas_report_and_ignores_unknown_names() -> None:
    policy = parse_policy(POLICY)
    state = Ledger(policy, backend=Recorder())
    p_target = policy.routes["chat"].targets[0]
    opened = state.adopt_health([(f"eject:{p_target.key}", 3.0), ("throttle:q", 1.0),
                                 ("eject:gone/model", 9.0), ("throttle:gone", 9.0), ("other", 1.0)], now=50.0)
    assert opened == [("p", p_target.key, "open")]
    assert not state.breaker(p_target).available(52.9)
    assert state.breaker(p_target).available(53.0)  # half-open: a probe of its own
    assert state.provider("q").throttled_until == 51.0
    assert state.adopt_health([(f"eject:{p_target.key}", 3.0)], now=50.0) == []  # already out


def test_memory_backend_share_applies_to_every_quota() -> None:
    policy = parse_policy(POLICY)
    state = Ledger(policy, backend=MemoryBackend(share=0.5))
    quota = state.provider("p").quota
    assert isinstance(quota, MemoryQuota) and quota.requests is not None
    assert quota.requests.capacity == 30.0


async def test_reload_cannot_switch_the_state_backend() -> None:
    async with Router(parse_policy(POLICY)) as router:
        redis = parse_policy(POLICY + "state: {backend: redis, url: redis://127.0.0.1:9/0}\n")
        with pytest.raises(PolicyError) as caught:
            router.reload(redis)
        assert caught.value.path == "state"
        assert router.policy.state.backend == "memory"
