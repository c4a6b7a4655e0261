"""Streams: free failover before the commit point, honesty after it (docs/architecture.md §4.7)."""

from __future__ import annotations

import pytest

from router import Router, StreamInterrupted, UpstreamError
from router.mock import Continue, Ok, RejectPrefill, Status, Stream
from router.mock.responses import split_evenly
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import collect, is_error_event, now, payload, stream_body, text_of
from tests.support.policies import tiered_policy

ANSWER = "The quick brown fox jumps over the lazy dog, then naps in the afternoon sun."


def assert_clean(events: list, interrupted: StreamInterrupted | None) -> None:
    assert interrupted is None, interrupted
    assert events, "no events"
    assert events[-1].is_done
    assert sum(1 for e in events if e.is_done) == 1
    assert not any(is_error_event(e) for e in events)
    assert all(payload(e) is not None for e in events[:-1]), "a malformed or foreign event reached the caller"


def assert_interrupted(events: list, interrupted: StreamInterrupted | None, reason: str) -> None:
    assert interrupted is not None, "a truncated stream was presented as complete"
    assert not any(e.is_done for e in events), "a truncated stream ended with [DONE]"
    assert is_error_event(events[-1]), "no explicit error event before the stream ended"
    assert interrupted.reason == reason
    error = payload(events[-1])
    assert error is not None and error["error"]["code"] == "stream_interrupted"
    assert reason in error["error"]["message"]


async def test_clean_stream_is_relayed_and_ends_with_done(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, chunks=6))
    async with Router(tiered_policy(a)) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert a.count == 1


async def test_stream_503_before_first_event_is_retried_invisibly(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Status.unavailable(), Stream(content=ANSWER))
    async with Router(tiered_policy(a, b)) as router:
        stream = router.stream(stream_body())
        events, interrupted = await collect(stream)
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert stream.provider == "a"
    assert (a.count, b.count) == (2, 0)


async def test_stream_error_as_first_event_is_retried_invisibly(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.script(Stream(error_first=True), Stream(content=ANSWER))
    async with Router(tiered_policy(a, b)) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert a.count + b.count == 2


async def test_stream_error_as_first_event_releases_the_connection_slot(
        fake_provider: FakeProviderFactory) -> None:
    # With one connection allowed, the retry on the same provider needs the failed attempt's slot back.
    a = await fake_provider("a")
    a.script(Stream(error_first=True), Stream(content=ANSWER))
    policy = tiered_policy(a, providers={"a": {"max_connections": 1}})
    async with Router(policy) as router:
        events, interrupted = await collect(router.stream(stream_body()))
        assert_clean(events, interrupted)
        assert text_of(events) == ANSWER
        assert a.count == 2
        # ... and afterwards the slot is free for the next request too.
        result = await router.chat({"model": "chat", "messages": [{"role": "user", "content": "x"}]})
    assert result.provider == "a"


async def test_slow_first_token_beyond_ttft_fails_over(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content=ANSWER, first_delay_s=3))
    b.set_default(Stream(content="from b"))
    policy = tiered_policy(a, b, route={"ttft_s": 0.3},
                           providers={"a": {"timeouts": {"first_byte_s": 5, "idle_s": 5}}})
    async with Router(policy) as router:
        started = now()
        stream = router.stream(stream_body())
        events, interrupted = await collect(stream)
        elapsed = now() - started
    assert_clean(events, interrupted)
    assert text_of(events) == "from b"
    assert stream.provider == "b"
    assert (a.count, b.count) == (1, 1)
    assert 0.3 <= elapsed < 0.3 + 1.0
    await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)


async def test_stream_cut_mid_answer_continues_on_a_prefill_target_exactly_once(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content=ANSWER, chunks=6, cut_after=2))
    b.set_default(Continue(ANSWER))
    policy = tiered_policy(a, b, providers={"b": {"supports_prefill": True}})
    async with Router(policy) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert (a.count, b.count) == (1, 1)
    # b was asked to continue the text the caller had already seen.
    messages = b.hits[0].json["messages"]  # type: ignore[index]
    assert messages[-1]["role"] == "assistant"
    prefix = messages[-1]["content"]
    assert prefix and ANSWER.startswith(prefix) and prefix != ANSWER
    # The caller sees one stream: one completion id throughout.
    ids = {payload(e)["id"] for e in events[:-1]}  # type: ignore[index]
    assert len(ids) == 1


async def test_stream_cut_with_a_target_that_rejects_prefill_ends_with_an_error_event(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content=ANSWER, chunks=6, cut_after=2))
    b.set_default(RejectPrefill(then=Ok()))
    policy = tiered_policy(a, b, providers={"b": {"supports_prefill": True}})
    async with Router(policy) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_interrupted(events, interrupted, "stream_cut")
    assert b.count == 1 and b.hits[0].status == 400  # the continuation was tried and refused
    assert ANSWER.startswith(text_of(events)) and text_of(events) != ANSWER


async def test_stream_cut_with_no_prefill_target_ends_with_an_error_event(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content=ANSWER, chunks=6, cut_after=2))
    async with Router(tiered_policy(a, b)) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_interrupted(events, interrupted, "stream_cut")
    assert b.count == 0  # b never declared supports_prefill: restarting there would repeat the answer


async def test_stream_stall_counts_as_a_cut_and_is_continued(fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Stream(content=ANSWER, chunks=6, stall_after=3))
    b.set_default(Continue(ANSWER))
    policy = tiered_policy(a, b, providers={"a": {"timeouts": {"idle_s": 0.3}}, "b": {"supports_prefill": True}})
    async with Router(policy) as router:
        started = now()
        events, interrupted = await collect(router.stream(stream_body()))
        elapsed = now() - started
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert (a.count, b.count) == (1, 1)
    assert elapsed < 0.3 + 1.0
    await a.wait_until(lambda: a.hits[0].disconnected, within_s=1.0)


async def test_stream_stall_without_a_continuation_ends_with_an_error_event(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, chunks=6, stall_after=3))
    policy = tiered_policy(a, providers={"a": {"timeouts": {"idle_s": 0.3}}})
    async with Router(policy) as router:
        started = now()
        events, interrupted = await collect(router.stream(stream_body()))
        elapsed = now() - started
    assert_interrupted(events, interrupted, "stream_stall")
    assert elapsed < 0.3 + 1.0


async def test_malformed_chunk_is_skipped_and_the_answer_is_complete(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, chunks=6, malformed_at=3))
    async with Router(tiered_policy(a)) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert a.count == 1


async def test_stream_finished_without_done_is_finalised_with_done_at_once(
        fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, send_done=False))
    policy = tiered_policy(a, providers={"a": {"timeouts": {"first_byte_s": 3, "idle_s": 3}}})
    async with Router(policy) as router:
        started = now()
        events, interrupted = await collect(router.stream(stream_body()))
        elapsed = now() - started
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert elapsed < 1.0, "the stream waited for an idle timeout instead of ending at the clean EOF"


async def test_clean_eof_without_finish_reason_is_not_a_success(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, send_done=False, send_finish_reason=False))
    async with Router(tiered_policy(a)) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_interrupted(events, interrupted, "stream_cut")
    assert text_of(events) == ANSWER  # all content arrived, but nothing said the answer was complete


async def test_stream_with_every_target_failing_before_the_first_event_raises_a_typed_error(
        fake_provider: FakeProviderFactory) -> None:
    a, b = await fake_provider("a"), await fake_provider("b")
    a.set_default(Status.unavailable())
    b.set_default(Status.unavailable())
    async with Router(tiered_policy(a, b)) as router:
        stream = router.stream(stream_body())
        with pytest.raises(UpstreamError) as caught:
            await stream.start()
        await stream.aclose()
    assert caught.value.status == 502
    assert a.count + b.count == 3


async def test_stream_cut_twice_is_continued_twice_and_the_answer_appears_once(
        fake_provider: FakeProviderFactory) -> None:
    a, b, c = await fake_provider("a"), await fake_provider("b"), await fake_provider("c")
    pieces = split_evenly(ANSWER, 6)
    a.set_default(Stream(content=ANSWER, chunks=6, cut_after=2))
    rest = "".join(pieces[2:])
    b.script(Stream(content=rest, chunks=4, cut_after=2))  # continues, then is cut as well
    for fake in (b, c):
        fake.set_default(Continue(ANSWER))
    prefill = {"supports_prefill": True}
    policy = tiered_policy(a, b, c, providers={"b": prefill, "c": prefill}, retry={"max_attempts": 4})
    async with Router(policy) as router:
        events, interrupted = await collect(router.stream(stream_body()))
    assert_clean(events, interrupted)
    assert text_of(events) == ANSWER
    assert a.count == 1
    assert b.count + c.count == 2  # b's continuation (cut), then one more continuation
    continuations = [hit.json["messages"][-1]["content"] for hit in b.hits + c.hits]  # type: ignore[index]
    shown_after_a = "".join(pieces[:2])
    shown_after_b = shown_after_a + "".join(split_evenly(rest, 4)[:2])
    assert sorted(continuations, key=len) == [shown_after_a, shown_after_b]


@pytest.mark.slow
async def test_stream_deadline_before_the_first_event_raises_504(fake_provider: FakeProviderFactory) -> None:
    a = await fake_provider("a")
    a.set_default(Stream(content=ANSWER, first_delay_s=5))
    policy = tiered_policy(a, providers={"a": {"timeouts": {"first_byte_s": 5, "idle_s": 5}}},
                           route={"deadline_s": 0.5})
    async with Router(policy) as router:
        started = now()
        stream = router.stream(stream_body())
        with pytest.raises(UpstreamError) as caught:
            await stream.start()
        elapsed = now() - started
        await stream.aclose()
    assert caught.value.status == 504
    assert elapsed < 0.5 + 0.1
