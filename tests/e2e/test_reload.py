"""Reload swaps the policy atomically; routers share nothing (docs/architecture.md §3 and §5)."""

from __future__ import annotations

import asyncio

import pytest

from router import PolicyError, Router
from router.mock import Status
from router.policy import parse_policy
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import MaxJitter, body
from tests.support.policies import tiered_policy


async def test_in_flight_request_keeps_its_policy_snapshot_across_reload(
        fake_provider: FakeProviderFactory) -> None:
    a, c = await fake_provider("a"), await fake_provider("c")
    a.script(Status.server_error(500))
    old = tiered_policy(a, retry={"base_interval_s": 0.3, "max_interval_s": 0.3})
    new = tiered_policy(c)
    async with Router(old, rng=MaxJitter()) as router:
        in_flight = asyncio.create_task(router.chat(body("old")))
        await a.wait_until(lambda: a.count == 1 and a.hits[0].ended is not None)
        router.reload(new)  # during the in-flight request's backoff
        fresh = await router.chat(body("new"))
        result = await in_flight
    assert result.provider == "a", "the in-flight request switched to the new policy's targets"
    assert [hit.status for hit in a.hits] == [500, 200]
    assert fresh.provider == "c"
    assert c.count == 1


async def test_breaker_state_of_an_unchanged_provider_survives_reload(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.server_error(500))  # one failure opens a's breaker for 30 s; later attempts would succeed
    breaker = {"a": {"breaker": {"consecutive_failures": 1, "base_ejection_s": 30, "max_ejection_s": 30}}}
    async with Router(tiered_policy(a, b, providers=breaker)) as router:
        assert (await router.chat(body())).provider == "b"
        # Same providers, a different route setting: a's breaker must carry over.
        router.reload(tiered_policy(a, b, providers=breaker, route={"deadline_s": 20}))
        results = [await router.chat(body()) for _ in range(3)]
    assert [r.provider for r in results] == ["b"] * 3
    assert a.count == 1


async def test_throttle_of_an_unchanged_provider_survives_reload(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("60"))
    async with Router(tiered_policy(a, b)) as router:
        assert (await router.chat(body())).provider == "b"
        router.reload(tiered_policy(a, b, route={"deadline_s": 20}))
        result = await router.chat(body())
    assert result.provider == "b"
    assert a.count == 1


async def test_invalid_policy_is_rejected_and_the_old_one_keeps_serving(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a)
    invalid = f"""
version: 1
providers:
  a: {{base_url: "{a.base_url}"}}
routes:
  chat:
    targets: [{{provider: a, model: m}}]
    retry: {{max_attempts: 0}}
"""
    async with Router(policy) as router:
        with pytest.raises(PolicyError) as caught:
            router.reload(parse_policy(invalid, source="next.yaml", env={}))
        assert router.policy is policy
        result = await router.chat(body())
    assert "routes.chat.retry.max_attempts" in str(caught.value)
    assert result.provider == "a"
    assert a.hits[0].json["model"] == "a-model"  # type: ignore[index]


async def test_two_routers_share_no_breaker_state(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.server_error(500))
    breaker = {"a": {"breaker": {"consecutive_failures": 1, "base_ejection_s": 30, "max_ejection_s": 30}}}
    async with Router(tiered_policy(a, b, providers=breaker)) as one, \
            Router(tiered_policy(a, b, providers=breaker)) as two:
        assert (await one.chat(body())).provider == "b"  # a's breaker is open in `one`
        assert (await two.chat(body())).provider == "a"
        assert (await one.chat(body())).provider == "b"
    assert [hit.status for hit in a.hits] == [500, 200]


async def test_two_routers_share_no_throttle_state(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("60"))
    async with Router(tiered_policy(a, b)) as one, Router(tiered_policy(a, b)) as two:
        assert (await one.chat(body())).provider == "b"
        assert (await two.chat(body())).provider == "a"
    assert [hit.status for hit in a.hits] == [429, 200]
