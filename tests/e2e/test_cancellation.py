"""A caller that goes away cancels the upstream request and every later attempt (docs/architecture.md §4.8)."""

from __future__ import annotations

import asyncio

import pytest

from router import Router, RouterError
from router.mock import Hang, Status, Stream
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import MaxJitter, body, quiet_for, stream_body
from tests.support.policies import tiered_policy


@pytest.mark.slow
async def test_cancelling_the_caller_closes_a_hanging_upstream_request_and_stops_retrying(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Hang())
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"first_byte_s": 5}}})
    async with Router(policy) as router:
        task = asyncio.create_task(router.chat(body()))
        await a.wait_for_hits(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)
        await quiet_for(1.5)
    assert (a.count, b.count) == (1, 0)


@pytest.mark.slow
async def test_cancelling_the_caller_during_a_backoff_sleep_stops_all_further_attempts(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.server_error(500))
    # MaxJitter: the backoff after the first 500 is exactly base_interval_s (1 s).
    policy = tiered_policy(a, b, retry={"base_interval_s": 1.0, "max_interval_s": 1.0})
    async with Router(policy, rng=MaxJitter()) as router:
        task = asyncio.create_task(router.chat(body()))
        await a.wait_until(lambda: a.count == 1 and a.hits[0].ended is not None)
        await asyncio.sleep(0.3)  # inside the backoff sleep
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await quiet_for(1.5)
    assert (a.count, b.count) == (1, 0)


@pytest.mark.slow
async def test_closing_a_stream_mid_answer_closes_the_upstream_connection(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content="one two three four five six seven eight", chunks=8, interval_s=0.2))
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"idle_s": 2}}})
    async with Router(policy) as router:
        stream = router.stream(stream_body())
        seen = 0
        async for _event in stream:
            seen += 1
            if seen == 2:
                break
        await stream.aclose()
        await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)
        assert a.hits[0].ended is not None
        await quiet_for(0.5)
    assert (a.count, b.count) == (1, 0)


@pytest.mark.slow
async def test_cancelling_a_stream_consumer_closes_the_upstream_connection(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content="one two three four five six seven eight", chunks=8, interval_s=0.3))
    policy = tiered_policy(a, providers={"a": {"timeouts": {"idle_s": 2}}})
    first_event = asyncio.Event()

    async def consume() -> None:
        async with router.stream(stream_body()) as stream:
            async for _event in stream:
                first_event.set()

    async with Router(policy) as router:
        task = asyncio.create_task(consume())
        await asyncio.wait_for(first_event.wait(), 1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)
        await quiet_for(0.5)
    assert a.count == 1


@pytest.mark.slow
async def test_closing_the_router_ends_in_flight_requests_without_new_attempts(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Hang())
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"first_byte_s": 5}}})
    router = Router(policy)
    task = asyncio.create_task(router.chat(body()))
    await a.wait_for_hits(1)
    await router.aclose()
    with pytest.raises(RouterError):
        async with asyncio.timeout(1.0):
            await task
    await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)
    await quiet_for(0.5)
    assert (a.count, b.count) == (1, 0), "a closed router kept sending requests"


@pytest.mark.slow
async def test_cancelling_a_stream_before_its_first_event_closes_the_upstream_request(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Hang())
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"first_byte_s": 5}}})
    async with Router(policy) as router:
        stream = router.stream(stream_body())
        task = asyncio.create_task(stream.start())
        await a.wait_for_hits(1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await stream.aclose()
        await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)
        await quiet_for(1.0)
    assert (a.count, b.count) == (1, 0)
