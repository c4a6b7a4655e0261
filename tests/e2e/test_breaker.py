"""Circuit breaker seen from the providers: ejection, single probes, recovery (docs/architecture.md §4.6)."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from router import Router
from router.mock import Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, now
from tests.support.policies import tiered_policy


@pytest.mark.slow
async def test_primary_down_then_up_is_probed_once_per_ejection_and_back_within_max_ejection(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    base_ejection_s, max_ejection_s = 0.2, 1.0
    policy = tiered_policy(a, b, providers={"a": {"breaker": {
        "consecutive_failures": 2, "base_ejection_s": base_ejection_s, "max_ejection_s": max_ejection_s}}})
    served: list[tuple[float, str]] = []

    async def client() -> None:
        while True:
            result = await router.chat(body())
            served.append((now(), result.provider))
            await asyncio.sleep(0.01)

    a.down = True
    async with Router(policy) as router:
        clients = [asyncio.create_task(client()) for _ in range(3)]
        await asyncio.sleep(2.0)
        down_hits = list(a.hits)
        a.down = False
        up_at = now()
        await asyncio.sleep(max_ejection_s + 0.5)
        for task in clients:
            task.cancel()
        ended = await asyncio.gather(*clients, return_exceptions=True)

    assert all(isinstance(e, asyncio.CancelledError) for e in ended), ended  # no client ever saw an error

    # While down: everything was served by the fallback ...
    assert all(provider == "b" for at, provider in served if at < up_at)
    assert len(down_hits) >= 3  # the failures that opened the breaker, then probes
    # ... the breaker opened after `consecutive_failures` (2) failures; attempts admitted before
    # it opened (at most one more per other client: 2) may still arrive, so at most 4 hits
    # start before it opened. Every later hit is a probe, and probes are at least one
    # ejection interval apart (also from the last attempt before the opening).
    assert all(hit.fault == "down" for hit in down_hits)
    starts = [hit.started for hit in down_hits[3:]]
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= base_ejection_s for gap in gaps), f"probes closer than one ejection interval: {gaps}"
    assert len(down_hits) <= 4 + 2.0 / base_ejection_s
    # After recovery: back on the primary within max_ejection_s (plus slack for one request).
    recovered = [hit.started for hit in a.hits if hit.status == 200]
    assert recovered, "the primary never came back into service"
    assert recovered[0] - up_at <= max_ejection_s + 0.3
    back = [provider for at, provider in served if at > recovered[0] + 0.1]
    assert back and all(provider == "a" for provider in back)


async def test_breaker_opens_after_consecutive_failures_and_new_requests_skip_the_target(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.server_error(500))
    policy = tiered_policy(a, b, retry={"max_attempts_per_target": 1}, providers={"a": {"breaker": {
        "consecutive_failures": 3, "base_ejection_s": 30, "max_ejection_s": 30}}})
    async with Router(policy) as router:
        results = [await router.chat(body()) for _ in range(8)]
    assert [r.provider for r in results] == ["b"] * 8
    assert a.count == 3


async def test_a_route_whose_targets_are_all_ejected_still_tries_one(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.script(Status.server_error(500))
    policy = tiered_policy(a, retry={"max_attempts_per_target": 1}, providers={"a": {"breaker": {
        "consecutive_failures": 1, "base_ejection_s": 30, "max_ejection_s": 30}}})
    async with Router(policy) as router:
        first_failed = False
        try:
            await router.chat(body())
        except Exception:
            first_failed = True
        result = await router.chat(body())
    assert first_failed
    assert result.provider == "a"
    assert a.count == 2
