"""Choice inside a priority tier: `least_busy` and weighted split (docs/architecture.md §4.2)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter

import pytest

from router import Router, UpstreamError
from router.mock import Ok, Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, stream_body, wait_for
from tests.support.policies import FAST_RETRY, make_policy, provider_entry


@pytest.mark.slow
async def test_least_busy_prefers_the_target_with_fewer_requests_in_flight(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    routes = {"chat": {"strategy": "least_busy", "retry": FAST_RETRY,
                       "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]}}
    patient = {"timeouts": {"first_byte_s": 3}}
    policy = make_policy({"a": provider_entry(a, **patient), "b": provider_entry(b, **patient)}, routes)
    for fake in (a, b):
        fake.set_default(Ok(delay_s=0.8))
    async with Router(policy, rng=random.Random(7)) as router:
        slow = asyncio.create_task(router.chat(body("slow")))
        await wait_for(lambda: a.count + b.count == 1)
        busy, idle = (a, b) if a.count else (b, a)
        for fake in (a, b):
            fake.set_default(Ok())
        results = [await router.chat(body(f"q{i}")) for i in range(6)]
        await slow
    assert [r.provider for r in results] == [idle.name] * 6, "least_busy sent a request to the busy target"
    assert busy.count == 1


@pytest.mark.slow
async def test_failed_stream_attempts_do_not_distort_in_flight_counts(fake_provider: FakeProviderFactory) -> None:
    # Two routes share target a/m. Failed stream attempts through `warm` must leave a's
    # in-flight count at exactly its true value, or least_busy on `chat` misjudges a.
    a, b = await fake_provider("a"), await fake_provider("b")
    routes = {
        "warm": {"retry": {**FAST_RETRY, "max_attempts": 1}, "targets": [{"provider": "a", "model": "m"}]},
        "chat": {"strategy": "least_busy", "retry": FAST_RETRY,
                 "targets": [{"provider": "a", "model": "m"}, {"provider": "b", "model": "m"}]},
    }
    patient = {"timeouts": {"first_byte_s": 3}}
    policy = make_policy({"a": provider_entry(a, **patient), "b": provider_entry(b, **patient)}, routes)
    async with Router(policy) as router:
        a.script(*[Status.unavailable()] * 3)
        for _ in range(3):
            with pytest.raises(UpstreamError):
                await router.stream(stream_body(model="warm")).start()
        a.script(Ok(delay_s=0.8))
        slow = asyncio.create_task(router.chat(body("slow", model="warm")))
        await a.wait_until(lambda: a.count == 4)
        results = [await router.chat(body(f"q{i}")) for i in range(4)]
        await slow
    assert [r.provider for r in results] == ["b"] * 4
    assert a.count == 4


async def test_weighted_split_follows_the_weights(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    routes = {"chat": {"retry": FAST_RETRY, "targets": [{"provider": "a", "model": "m", "weight": 3},
                                                        {"provider": "b", "model": "m", "weight": 1}]}}
    policy = make_policy({"a": provider_entry(a), "b": provider_entry(b)}, routes)
    requests = 200
    async with Router(policy, rng=random.Random(20240501)) as router:
        results = []
        for start in range(0, requests, 20):  # modest concurrency keeps it quick
            results += await asyncio.gather(*(router.chat(body(f"q{i}")) for i in range(start, start + 20)))
    served = Counter(r.provider for r in results)
    assert (a.count, b.count) == (served["a"], served["b"])
    assert a.count + b.count == requests
    share = a.count / requests
    assert 0.65 <= share <= 0.85, f"a served {share:.0%} of requests with 75% of the weight"
