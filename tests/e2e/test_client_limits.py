"""Per-client limits at admission (docs/architecture.md §4.1): refused or queued before any upstream attempt."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from router import RateLimited, Router, UpstreamError
from router.mock import Status
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, collect, now, stream_body
from tests.support.policies import tiered_policy

ENV = {"WEB_KEY": "web-key-1"}


def clients(**limits: Any) -> list[dict[str, Any]]:
    return [{"name": "web", "key_env": "WEB_KEY", "limits": limits}]


async def test_client_over_its_request_rate_gets_rate_limited_with_retry_after(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(requests_per_second=1, burst=2), env=ENV)
    async with Router(policy) as router:
        await router.chat(body(), client="web")
        await router.chat(body(), client="web")
        started = now()
        with pytest.raises(RateLimited) as caught:
            await router.chat(body(), client="web")
        assert now() - started < 0.1  # refused at once (queue_s defaults to 0)
    assert caught.value.scope == "client"
    assert caught.value.status == 429
    assert 0.5 < caught.value.retry_after <= 1.0
    assert a.count == 2, "a request over the client's limit reached the provider"


async def test_client_limit_retry_after_is_honest(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(requests_per_second=4, burst=1), env=ENV)
    async with Router(policy) as router:
        await router.chat(body(), client="web")
        with pytest.raises(RateLimited) as caught:
            await router.chat(body(), client="web")
        await asyncio.sleep(caught.value.retry_after + 0.02)
        await router.chat(body(), client="web")  # admitted once the advertised wait is over
    assert a.count == 2


@pytest.mark.slow
async def test_client_with_queue_s_waits_for_capacity_instead_of_being_refused(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(requests_per_second=2, burst=1, queue_s=2), env=ENV)
    async with Router(policy) as router:
        results = await asyncio.gather(*(router.chat(body(f"q{i}"), client="web") for i in range(3)))
    assert [r.provider for r in results] == ["a"] * 3
    starts = sorted(hit.started for hit in a.hits)
    gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
    assert all(gap >= 0.4 for gap in gaps), f"queued requests were not spaced at the client's rate: {gaps}"


async def test_client_queue_never_waits_past_queue_s(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(requests_per_second=0.5, burst=1, queue_s=0.3), env=ENV)
    async with Router(policy) as router:
        await router.chat(body(), client="web")
        started = now()
        with pytest.raises(RateLimited):
            await router.chat(body(), client="web")
        assert now() - started < 0.3 + 0.1
    assert a.count == 1


async def test_token_reservation_is_reconciled_with_real_usage(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    # 1000 tokens per minute; each request reserves ~max_tokens (900) but really uses ~10.
    policy = tiered_policy(a, clients=clients(tokens_per_minute=1000), env=ENV)
    async with Router(policy) as router:
        results = [await router.chat(body(max_tokens=900), client="web") for _ in range(3)]
    assert len(results) == 3
    assert a.count == 3


async def test_token_limit_refuses_a_request_that_does_not_fit(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(tokens_per_minute=1000), env=ENV)
    async with Router(policy) as router:
        # Two requests in flight at once: the second reservation cannot fit until the first settles.
        first, second = await asyncio.gather(router.chat(body(max_tokens=900), client="web"),
                                             router.chat(body(max_tokens=900), client="web"),
                                             return_exceptions=True)
    assert not isinstance(first, BaseException)
    assert isinstance(second, RateLimited) and second.scope == "client"
    assert second.retry_after > 10  # ~900 tokens at 1000 per minute
    assert a.count == 1


async def test_stream_token_reservation_is_reconciled_with_real_usage(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    policy = tiered_policy(a, clients=clients(tokens_per_minute=1000), env=ENV)
    async with Router(policy) as router:
        for _ in range(3):
            events, interrupted = await collect(router.stream(stream_body(max_tokens=900), client="web"))
            assert interrupted is None and events[-1].is_done
    assert a.count == 3


@pytest.mark.parametrize("streamed", [False, True], ids=["chat", "stream"])
async def test_failed_request_gives_its_token_reservation_back(fake_provider: FakeProviderFactory,
                                                               streamed: bool) -> None:
    a = await fake_provider("a")
    a.script(Status.unavailable(), Status.unavailable())
    policy = tiered_policy(a, clients=clients(tokens_per_minute=1000), env=ENV)
    async with Router(policy) as router:
        with pytest.raises(UpstreamError):
            if streamed:
                await router.stream(stream_body(max_tokens=900), client="web").start()
            else:
                await router.chat(body(max_tokens=900), client="web")
        result = await router.chat(body(max_tokens=900), client="web")
    assert result.provider == "a"
    assert a.count == 3
