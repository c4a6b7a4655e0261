"""429 handling and provider quotas, observed at the fake providers.

docs/architecture.md §4.4: a 429 marks the provider throttled until Retry-After (or a backoff
when there is none); never an attempt on it earlier than that; the request waits for
the preferred target only within `wait_for_preferred_s`, otherwise it fails over at
once; with nothing left, 429 with Retry-After. New requests follow the same rule.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from email.utils import formatdate

import pytest

from router import RateLimited, Router
from router.mock import Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, now
from tests.support.policies import tiered_policy


@pytest.mark.slow
async def test_retry_after_2_no_attempt_on_preferred_target_before_it_expires(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("2"))
    async with Router(tiered_policy(a, b)) as router:
        await router.chat(body())
    assert a.count == 2
    first, second = a.hits
    assert first.status == 429 and first.ended is not None
    assert second.started - first.ended >= 2.0, "the preferred target was retried before Retry-After expired"


@pytest.mark.slow
async def test_retry_after_within_wait_for_preferred_is_answered_by_the_preferred_target(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("2"))
    async with Router(tiered_policy(a, b)) as router:  # wait_for_preferred_s defaults to 5
        started = now()
        result = await router.chat(body())
        elapsed = now() - started
    assert result.provider == "a"
    assert result.text == "Hello from a"
    assert b.count == 0
    assert 2.0 <= elapsed < 4.0


async def test_wait_for_preferred_zero_fails_over_at_once_on_429(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("2"))
    async with Router(tiered_policy(a, b, retry={"wait_for_preferred_s": 0})) as router:
        started = now()
        result = await router.chat(body())
        elapsed = now() - started
    assert result.provider == "b"
    assert (a.count, b.count) == (1, 1)
    assert elapsed < 0.5


async def test_retry_after_longer_than_wait_for_preferred_fails_over_at_once(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("60"))
    async with Router(tiered_policy(a, b)) as router:
        started = now()
        result = await router.chat(body())
        elapsed = now() - started
    assert result.provider == "b"
    assert (a.count, b.count) == (1, 1)
    assert elapsed < 0.5


async def test_new_requests_do_not_hit_a_throttled_provider(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("60"))
    async with Router(tiered_policy(a, b)) as router:
        first = await router.chat(body())
        later = [await router.chat(body()) for _ in range(5)]
    assert first.provider == "b"
    assert [r.provider for r in later] == ["b"] * 5
    assert a.count == 1, "a throttled provider was hammered by new requests"


@pytest.mark.slow
async def test_new_request_during_throttle_window_waits_for_the_preferred_target(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("2"))
    async with Router(tiered_policy(a, b)) as router:
        first = asyncio.create_task(router.chat(body("one")))
        await a.wait_until(lambda: a.count == 1 and a.hits[0].ended is not None)
        await asyncio.sleep(0.2)  # well inside the throttle window
        second = await router.chat(body("two"))
        assert (await first).provider == "a"
    assert second.provider == "a"
    assert b.count == 0
    throttled_at = a.hits[0].ended
    assert throttled_at is not None
    assert a.count == 3
    assert all(hit.started - throttled_at >= 2.0 for hit in a.hits[1:]), \
        [hit.started - throttled_at for hit in a.hits[1:]]


async def test_429_without_retry_after_backs_off_before_the_next_attempt(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.script(Status.rate_limited(None), Status.rate_limited(None))
    policy = tiered_policy(a, retry={"base_interval_s": 0.2, "max_interval_s": 0.4,
                                     "max_attempts_per_target": 3})
    async with Router(policy) as router:
        result = await router.chat(body())
    assert result.provider == "a"
    assert a.count == 3
    for earlier, later in itertools.pairwise(a.hits):
        assert earlier.ended is not None
        assert later.started - earlier.ended >= 0.2, "a 429 without Retry-After was retried at once"


async def test_only_target_throttled_beyond_wait_answers_rate_limited_with_its_retry_after(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.script(Status.rate_limited("30"))
    async with Router(tiered_policy(a)) as router:
        started = now()
        with pytest.raises(RateLimited) as caught:
            await router.chat(body())
        elapsed = now() - started
        # A new request during the window is refused without reaching the provider.
        with pytest.raises(RateLimited) as again:
            await router.chat(body())
    assert elapsed < 0.5
    assert 29.0 <= caught.value.retry_after <= 30.0
    assert caught.value.status == 429
    assert 28.0 <= again.value.retry_after <= 30.0
    assert a.count == 1


async def test_provider_quota_sends_excess_requests_to_the_fallback_without_hitting_the_primary(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    policy = tiered_policy(a, b, providers={"a": {"limits": {"requests_per_minute": 3}}})
    async with Router(policy) as router:
        results = [await router.chat(body()) for _ in range(6)]
    assert [r.provider for r in results] == ["a"] * 3 + ["b"] * 3
    assert a.count == 3, "limit-aware routing spent a request on a provider whose quota was empty"
    assert all(hit.status == 200 for hit in a.hits)
    assert b.count == 3


async def test_retry_after_as_http_date_is_honoured(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited(formatdate(time.time() + 60, usegmt=True)))
    async with Router(tiered_policy(a, b)) as router:
        first = await router.chat(body())
        second = await router.chat(body())
    assert (first.provider, second.provider) == ("b", "b")
    assert a.count == 1


async def test_retry_after_beyond_the_deadline_fails_over_at_once(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("2"))  # within wait_for_preferred_s, but not within the deadline
    async with Router(tiered_policy(a, b, route={"deadline_s": 1.5})) as router:
        started = now()
        result = await router.chat(body())
        elapsed = now() - started
    assert result.provider == "b"
    assert elapsed < 0.5
    assert a.count == 1


@pytest.mark.slow
async def test_503_with_retry_after_is_not_retried_before_it_expires(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.script(Status.unavailable(retry_after="1"))
    async with Router(tiered_policy(a)) as router:
        result = await router.chat(body())
    assert result.provider == "a"
    assert a.count == 2
    assert a.hits[0].ended is not None
    assert a.hits[1].started - a.hits[0].ended >= 1.0


async def test_every_target_throttled_answers_rate_limited_with_the_soonest_retry_after(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.rate_limited("30"))
    b.script(Status.rate_limited("10"))
    async with Router(tiered_policy(a, b)) as router:
        with pytest.raises(RateLimited) as caught:
            await router.chat(body())
    assert (a.count, b.count) == (1, 1)
    assert caught.value.scope == "providers"
    assert 9.0 <= caught.value.retry_after <= 10.0


async def test_provider_token_quota_is_reconciled_with_real_usage(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    # ~920 tokens reserved per request (max_tokens 900), ~10 really used.
    policy = tiered_policy(a, b, providers={"a": {"limits": {"tokens_per_minute": 1000}}})
    async with Router(policy) as router:
        results = [await router.chat(body(max_tokens=900)) for _ in range(3)]
    assert [r.provider for r in results] == ["a"] * 3
    assert b.count == 0


@pytest.mark.slow
async def test_only_target_that_keeps_answering_429_ends_in_rate_limited(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Status.rate_limited("1"))
    async with Router(tiered_policy(a)) as router:
        with pytest.raises(RateLimited) as caught:
            await router.chat(body())
    assert a.count == 2
    assert caught.value.scope == "providers"
    assert 0.0 < caught.value.retry_after <= 1.0
