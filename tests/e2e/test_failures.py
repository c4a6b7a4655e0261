"""Provider failures: retry, failover and what reaches the caller (docs/architecture.md §4.4-4.5).

Every count is taken at the fake providers.
"""

from __future__ import annotations

import asyncio

import pytest

from router import NoTargetAvailable, Router, UpstreamError
from router.mock import Hang, Reset, Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import MaxJitter, body, hits_on, now
from tests.support.policies import tiered_policy


async def test_500_once_is_retried_on_the_same_target_after_a_backoff(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.server_error(500))
    async with Router(tiered_policy(a, b)) as router:
        result = await router.chat(body())
    assert result.provider == "a"
    assert result.text == "Hello from a"
    assert (a.count, b.count) == (2, 0)
    assert [hit.status for hit in a.hits] == [500, 200]
    assert a.hits[0].ended is not None and a.hits[1].started >= a.hits[0].ended


async def test_persistent_503_uses_max_attempts_per_target_then_fails_over(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.unavailable())
    async with Router(tiered_policy(a, b, retry={"max_attempts": 3, "max_attempts_per_target": 2})) as router:
        result = await router.chat(body())
    assert result.provider == "b"
    assert (a.count, b.count) == (2, 1)


async def test_max_attempts_bounds_attempts_across_all_targets(fake_provider: FakeProviderFactory) -> None:
    fakes = [await fake_provider(name) for name in ("a", "b", "c")]
    for fake in fakes:
        fake.set_default(Status.unavailable())
    # 3 targets x 2 attempts each would be 6; max_attempts caps the request at 4.
    policy = tiered_policy(*fakes, retry={"max_attempts": 4, "max_attempts_per_target": 2})
    async with Router(policy) as router:
        with pytest.raises(UpstreamError) as caught:
            await router.chat(body())
    assert sum(fake.count for fake in fakes) == 4
    assert [fake.count for fake in fakes] == [2, 2, 0]
    assert caught.value.status == 502
    assert caught.value.attempts == 4


async def test_silent_primary_gets_one_attempt_and_the_fallback_answers_within_first_byte_timeout(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Hang())
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"first_byte_s": 0.4}}})
    async with Router(policy) as router:
        started = now()
        result = await router.chat(body())
        elapsed = now() - started
    assert result.provider == "b"
    assert (a.count, b.count) == (1, 1)
    assert 0.4 <= elapsed < 0.4 + 1.0
    # The router gave up on the silent provider and closed its connection.
    await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)


@pytest.mark.parametrize("rst", [True, False], ids=["rst", "fin"])
async def test_connection_reset_before_headers_is_retried_and_answered(
        fake_provider: FakeProviderFactory, rst: bool) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Reset(rst=rst))
    async with Router(tiered_policy(a, b)) as router:
        result = await router.chat(body())
    assert result.text == "Hello from a"
    assert (a.count, b.count) == (2, 0)
    assert a.hits[0].aborted


async def test_connection_refused_fails_over(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    policy = tiered_policy(a, b)
    await a.stop()  # nothing listens on a's port any more
    async with Router(policy) as router:
        result = await router.chat(body())
    assert result.provider == "b"
    assert b.count == 1


async def test_every_target_ejected_and_refusing_connections_is_a_503_with_retry_after_not_a_502(
        fake_provider: FakeProviderFactory) -> None:
    # With every provider down, a request the retry budget lets make all its attempts used to end in a 502
    # without Retry-After, while its neighbours (refused by the budget) got 503 with Retry-After. The
    # outage run of bench/soak.py (every provider refusing connections for 60 s) saw 65 such 502s in
    # 10,000 answers. Once every target's breaker is open the route is down: 503, back when one re-opens.
    a, b = await fake_provider("a"), await fake_provider("b")
    await a.stop()
    await b.stop()
    breaker = {"breaker": {"consecutive_failures": 1, "base_ejection_s": 5, "max_ejection_s": 5}}
    policy = tiered_policy(a, b, providers={"a": breaker, "b": breaker}, retry={"max_attempts": 3},
                           retry_budget={"percent": 100, "min_per_second": 100})
    async with Router(policy) as router:
        with pytest.raises(NoTargetAvailable) as caught:
            await router.chat(body())
    assert caught.value.status == 503
    assert caught.value.attempts == 3  # a, b, then a again although ejected: the budget allowed it
    assert caught.value.retry_after is not None and 4 < caught.value.retry_after <= 5


async def test_context_length_exceeded_is_not_retried_and_fails_over_to_the_next_target(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.context_length())
    async with Router(tiered_policy(a, b, models={"a": "small-8k", "b": "large-128k"})) as router:
        result = await router.chat(body())
    assert result.provider == "b"
    assert result.model == "large-128k"
    assert (a.count, b.count) == (1, 1)


async def test_context_length_exceeded_skips_other_targets_with_the_same_model(
        fake_provider: FakeProviderFactory) -> None:
    a, b, c = await fake_provider("a"), await fake_provider("b"), await fake_provider("c")
    a.set_default(Status.context_length())
    policy = tiered_policy(a, b, c, models={"a": "small-8k", "b": "small-8k", "c": "large-128k"})
    async with Router(policy) as router:
        result = await router.chat(body())
    assert result.provider == "c"
    assert (a.count, b.count, c.count) == (1, 0, 1)


async def test_context_length_exceeded_with_no_other_target_returns_the_providers_400(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Status.context_length(limit=8192))
    async with Router(tiered_policy(a)) as router:
        with pytest.raises(UpstreamError) as caught:
            await router.chat(body())
    assert a.count == 1
    error = caught.value
    assert error.status == 400
    assert "maximum context length is 8192 tokens" in error.message
    assert b"context_length_exceeded" in error.body
    assert error.code == "context_length_exceeded"


async def test_content_policy_violation_is_fatal_and_passes_the_providers_reason(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.content_policy("the prompt asks for a weapon"))
    async with Router(tiered_policy(a, b)) as router:
        with pytest.raises(UpstreamError) as caught:
            await router.chat(body())
    assert (a.count, b.count) == (1, 0)
    error = caught.value
    assert error.status == 400
    assert "the prompt asks for a weapon" in error.message
    assert error.code == "content_policy_violation"
    assert b"the prompt asks for a weapon" in error.body


async def test_other_4xx_request_errors_are_fatal_without_failover(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status(422, "invalid_value", message="temperature must be <= 2"))
    async with Router(tiered_policy(a, b)) as router:
        with pytest.raises(UpstreamError) as caught:
            await router.chat(body())
    assert (a.count, b.count) == (1, 0)
    assert caught.value.status == 422
    assert "temperature must be <= 2" in caught.value.message


async def test_401_from_primary_fails_over_and_ejects_it_for_later_requests(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.unauthorized())  # later attempts on a would succeed: only skipping keeps it at 1
    policy = tiered_policy(a, b, providers={"a": {"breaker": {"base_ejection_s": 0.1, "max_ejection_s": 30}}})
    async with Router(policy) as router:
        first = await router.chat(body())
        await asyncio.sleep(0.3)  # longer than a base ejection: the 401 ejection is the long one
        later = [await router.chat(body()) for _ in range(5)]
    assert first.provider == "b"
    assert [r.provider for r in later] == ["b"] * 5
    assert a.count == 1
    assert b.count == 6


@pytest.mark.slow
async def test_deadline_ends_a_hanging_request_with_504_on_time(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Hang())
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"first_byte_s": 5}}}, route={"deadline_s": 0.5})
    async with Router(policy) as router:
        started = now()
        with pytest.raises(UpstreamError) as caught:
            await router.chat(body())
        elapsed = now() - started
    assert caught.value.status == 504
    assert elapsed < 0.5 + 0.1
    assert (a.count, b.count) == (1, 0)
    await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)


async def test_retry_budget_bounds_upstream_load_when_every_provider_fails(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.unavailable())
    b.set_default(Status.unavailable())
    percent, min_per_second, window_s = 10, 0.2, 5
    policy = tiered_policy(a, b, retry_budget={"percent": percent, "min_per_second": min_per_second,
                                               "window_s": window_s})
    requests = 60
    async with Router(policy) as router:
        async with asyncio.timeout(10):  # clients get errors, not hangs
            outcomes = await asyncio.gather(*(router.chat(body(f"q{i}")) for i in range(requests)),
                                            return_exceptions=True)
    assert all(isinstance(o, UpstreamError | NoTargetAvailable) for o in outcomes), outcomes
    total = a.count + b.count
    bound = requests * (1 + percent / 100) + min_per_second * window_s
    assert total <= bound, f"{total} upstream attempts for {requests} requests (budget allows {bound})"
    assert total >= requests  # every request made its first attempt
    assert hits_on(a, 503) + hits_on(b, 503) == total


async def test_200_with_an_error_body_is_classified_like_the_error_and_retried(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status(200, body=b'{"error": {"message": "upstream overloaded", "type": "server_error", '
                              b'"code": "server_error"}}', label="ok_with_error"))
    async with Router(tiered_policy(a, b)) as router:
        result = await router.chat(body())
    assert result.text == "Hello from a"
    assert (a.count, b.count) == (2, 0)


async def test_200_with_a_non_json_body_is_not_a_success(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status(200, body=b"<html><body>502 Bad Gateway</body></html>", label="html",
                         headers={"Content-Type": "text/html"}))
    async with Router(tiered_policy(a, b)) as router:
        result = await router.chat(body())
    assert result.provider == "b"
    assert b.count == 1


async def test_deadline_is_never_exceeded_by_backoff(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Status.server_error(500))
    policy = tiered_policy(a, retry={"base_interval_s": 5, "max_interval_s": 5, "max_attempts_per_target": 3},
                           route={"deadline_s": 0.5})
    async with Router(policy) as router:
        started = now()
        with pytest.raises(UpstreamError):
            await router.chat(body())
        elapsed = now() - started
    assert elapsed < 0.5 + 0.1


async def test_only_target_retried_after_a_backoff_even_when_its_breaker_just_opened(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.script(Status.server_error(500))
    policy = tiered_policy(a, retry={"base_interval_s": 0.3, "max_interval_s": 0.3},
                           providers={"a": {"breaker": {"consecutive_failures": 1}}})
    async with Router(policy, rng=MaxJitter()) as router:
        result = await router.chat(body())
    assert result.provider == "a"
    assert a.count == 2
    assert a.hits[0].ended is not None
    assert a.hits[1].started - a.hits[0].ended >= 0.3, "a failing provider was hammered without backoff"
