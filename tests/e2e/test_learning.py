"""The learning features over real HTTP on loopback: limit headers through both clients, probes of a
provider that really stops listening, and a hedge whose loser's connection really closes.

The scenarios' numbers are measured on virtual time (tests/learning/) and by `bench/adaptive.py`;
here the point is the wire: headers as the clients hand them over, probes as real GETs, a real
cancelled upstream request.
"""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit

import pytest

from router import Router
from router.mock import Ok, Stream
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body, stream_body
from tests.learning.scenario import Counting
from tests.support.policies import FAST_RETRY, make_policy, provider_entry


def tiers(**extra: object) -> dict[str, object]:
    return {"chat": {"retry": {**FAST_RETRY, "wait_for_preferred_s": 0}, **extra,
                     "targets": [{"provider": "a", "model": "m", "priority": 0},
                                 {"provider": "b", "model": "m", "priority": 1}]}}


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_a_provider_that_says_it_has_nothing_left_is_not_asked_again_before_its_reset(
        fake_provider: FakeProviderFactory, client: str) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Ok(headers={"X-RateLimit-Limit-Requests": "60", "X-RateLimit-Remaining-Requests": "0",
                         "X-RateLimit-Reset-Requests": "30s"}))
    policy = make_policy({"a": provider_entry(a, http_client=client), "b": provider_entry(b, http_client=client)},
                         tiers())
    observer = Counting()
    async with Router(policy, observer=observer) as router:
        first = await router.chat(body("one"))
        rest = [await router.chat(body(f"q{i}")) for i in range(5)]
    assert first.provider == "a"
    assert [r.provider for r in rest] == ["b"] * 5
    assert a.count == 1  # no request spent (and no 429) to learn it
    assert observer.limit_throttles == 1


@pytest.mark.slow
async def test_probes_bring_back_a_provider_that_stopped_listening_without_a_client_request(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    port = urlsplit(a.base_url).port
    policy = make_policy({"a": provider_entry(a, health_probe={"interval_s": 0.3},
                                              breaker={"consecutive_failures": 1}),
                          "b": provider_entry(b)}, tiers())
    observer = Counting()
    async with Router(policy, observer=observer) as router:
        assert (await router.chat(body("up"))).provider == "a"
        await a.stop()
        served = [(await router.chat(body(f"down{i}"))).provider for i in range(3)]
        assert served == ["b"] * 3
        # While it is down, no client request goes to a: only probes (which fail).
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert (await router.chat(body("still down"))).provider == "b"
            await asyncio.sleep(0.05)
        assert observer.probes and not any(ok for _, ok in observer.probes)
        await a.start(port=port)
        recovered_at = time.monotonic()
        while (await router.chat(body("back?"))).provider != "a":
            assert time.monotonic() - recovered_at < 3.0, "a never came back"
            await asyncio.sleep(0.05)
    assert observer.probes[-1] == ("a", True)
    assert a.count == 2  # "up", and the first request after the probe found it back


@pytest.mark.slow
async def test_a_hedged_stream_is_served_by_the_faster_target_and_the_loser_is_closed(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Stream(first_delay_s=5.0))
    policy = make_policy({"a": provider_entry(a, timeouts={"first_byte_s": 10, "idle_s": 10}),
                          "b": provider_entry(b)}, tiers(hedge={"after_s": 0.2, "max_percent": 100}))
    observer = Counting()
    async with Router(policy, observer=observer) as router:
        started = time.monotonic()
        async with router.stream(stream_body()) as stream:
            events = [event async for event in stream]
            first_after = time.monotonic() - started
        assert stream.provider == "b"
        await a.wait_until(lambda: a.hits[0].ended is not None, within_s=1.0)  # its connection was closed
    assert events[-1].data == "[DONE]"
    assert first_after < 1.5
    assert a.hits[0].disconnected
    assert observer.hedges == {"won": 1}
