"""A stream is relayed a read at a time: what one upstream read brought goes on as one batch.

The stream rules are the same whatever the provider's reads look like: the same events reach
the caller, malformed ones are skipped and counted, an error event cuts the stream where it
stands (what came before it in the same read is the caller's), `[DONE]` ends it, and the gap
metric has one observation per event after the first. Each test runs with one event per read
(as a paced provider sends them) and with many (as an instant one does).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router import StreamInterrupted
from router.policy.model import Target
from router.upstream.sse import SseRun
from tests.metrics.helpers import CountingObserver
from tests.support.memory import REQUEST, MemoryReply, ScriptedTransport, harness, sse_body, stream_reply

A = Target("a", "model-a", priority=0)
B = Target("b", "model-b", priority=1)
PIECES = ["The ", "quick ", "brown ", "fox."]
READS = [1, 2, 3, 100]


def chunk(content: str) -> bytes:
    return b"data: " + json.dumps({"id": "s1", "choices": [{"index": 0, "delta": {"content": content},
                                                                "finish_reason": None}]}).encode() + b"\n\n"


def text_of(data: list[str]) -> str:
    text = []
    for item in data:
        if item != "[DONE]":
            for choice in json.loads(item).get("choices", ()):
                text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def relay(reply: MemoryReply, *, batches: bool = False, **scripts: list[MemoryReply]) -> tuple[
        list[str], list[list[str]], CountingObserver, ScriptedTransport]:
    observer = CountingObserver()
    transport = ScriptedTransport(a=[reply], **scripts)
    h = harness([A, B], transport, observer=observer, prefill={"a", "b"})
    seen: list[str] = []
    grouped: list[list[str]] = []
    async with h.router.stream({**REQUEST, "stream": True}) as stream:
        if batches:
            async for batch in stream.batches():
                grouped.append([event.data for item in batch  # a run is a burst of plain events: its events
                                for event in (item.events() if isinstance(item, SseRun) else [item])])
                seen.extend(grouped[-1])
        else:
            async for event in stream:
                seen.append(event.data)
    return seen, grouped, observer, transport


@pytest.mark.parametrize("per_read", READS)
async def test_the_caller_sees_the_same_events_however_the_provider_reads_come(per_read: int) -> None:
    body = sse_body(PIECES, usage={"prompt_tokens": 3, "completion_tokens": 4})
    expected, _, _, _ = await relay(stream_reply(body))
    seen, grouped, observer, _ = await relay(stream_reply(body, per_read=per_read), batches=True)
    assert seen == expected and seen[-1] == "[DONE]"
    assert text_of(seen) == "".join(PIECES)
    assert all(len(batch) <= per_read for batch in grouped)
    assert len(grouped) == -(-len(seen) // per_read)  # one batch per read
    # One gap per event after the first; the events of one read came together (gaps of zero).
    assert len(observer.gaps) == len(seen) - 1
    if per_read > 1:
        assert sum(1 for _, gap in observer.gaps if gap == 0.0) >= len(seen) - len(grouped)


@pytest.mark.parametrize("per_read", READS)
async def test_a_malformed_event_inside_a_read_is_skipped_and_counted(per_read: int) -> None:
    body = sse_body(PIECES[:2], finish=False, done=False) + b"data: {not json\n\n" + sse_body(PIECES[2:])
    seen, _, observer, _ = await relay(stream_reply(body, per_read=per_read))
    assert "{not json" not in seen
    assert text_of(seen) == "".join(PIECES)
    assert observer.malformed == ["a"]


@pytest.mark.parametrize("per_read", READS)
async def test_an_error_event_inside_a_read_cuts_there_and_the_answer_continues_elsewhere(per_read: int) -> None:
    error = {"error": {"message": "boom", "type": "error", "code": "invalid_api_key"}}  # a fail-over verdict
    body = sse_body(PIECES[:2], finish=False, done=False) + b"data: " + json.dumps(error).encode() + b"\n\n" \
        + chunk("never shown")
    rest = stream_reply(sse_body(["brown fox."]))
    seen, _, _, transport = await relay(stream_reply(body, per_read=per_read), b=[rest])
    assert transport.providers == ["a", "b"]
    assert "never shown" not in text_of(seen)
    assert text_of(seen) == "".join(PIECES)  # what came before the error, then the continuation, once
    assert seen[-1] == "[DONE]"


@pytest.mark.parametrize("per_read", READS)
async def test_events_after_done_in_the_same_read_are_not_relayed(per_read: int) -> None:
    body = sse_body(PIECES) + chunk("after the end")
    seen, _, _, _ = await relay(stream_reply(body, per_read=per_read))
    assert seen[-1] == "[DONE]" and "after the end" not in text_of(seen)


@pytest.mark.parametrize("per_read", READS)
async def test_a_read_without_finish_or_done_at_the_end_is_a_truncation(per_read: int) -> None:
    body = sse_body(PIECES, finish=False, done=False)
    observer = CountingObserver()
    transport = ScriptedTransport(a=[stream_reply(body, per_read=per_read)])
    h = harness([A], transport, observer=observer)
    seen: list[str] = []
    with pytest.raises(StreamInterrupted):
        async with h.router.stream({**REQUEST, "stream": True}) as stream:
            async for event in stream:
                seen.append(event.data)
    assert "[DONE]" not in seen and json.loads(seen[-1])["error"]["code"] == "stream_interrupted"


def event_bytes(kind: str, index: int) -> bytes:
    if kind == "text":
        return chunk(f"w{index} ")
    payload = {"malformed": b"{not json", "empty": b"", "finish": json.dumps(
        {"id": "s1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}).encode(),
        "usage": json.dumps({"id": "s1", "choices": [],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 2}}).encode(),
        "error": json.dumps({"error": {"message": "boom", "type": "server_error"}}).encode(),
        "tool": json.dumps({"id": "s1", "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0}]}}]}).encode(),
        "done": b"[DONE]", "two": b'{"choices":[{"delta":{"content":"X"}}]}{}', "opened": b'{"choices":[{"delta":[',
        "closed": b"]}]}", "huge": b'{"n":' + b"1" * 4301 + b',"choices":[{"delta":{"content":"H"}}]}'}[kind]
    return b"data: " + payload + b"\n\n"


async def outcome(body: bytes, per_read: int) -> tuple[list[str], str | None, list[str], list[str]]:
    """What the caller sees, how the stream ended, and what was counted malformed and continued."""
    rest = stream_reply(sse_body(["rest."]))
    observer = CountingObserver()
    transport = ScriptedTransport(a=[stream_reply(body, per_read=per_read)], b=[rest])
    h = harness([A, B], transport, observer=observer, prefill={"a", "b"})
    seen: list[str] = []
    error = None
    try:
        async with h.router.stream({**REQUEST, "stream": True}) as stream:
            async for event in stream:
                seen.append(event.data)
    except Exception as exc:  # the same exception either way
        error = type(exc).__name__
    return seen, error, observer.malformed, transport.providers


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(["text"] * 6 + ["malformed", "empty", "finish", "usage", "error", "tool", "done",
                                                 "two", "opened", "closed", "huge"]),
                min_size=1, max_size=14),
       st.sampled_from([2, 3, 5, 100]))
def test_any_stream_reaches_the_caller_the_same_in_one_read_as_one_event_per_read(kinds: list[str],
                                                                                  per_read: int) -> None:
    # Reads of several events come as runs, which the relay checks in one pass when they are plain text:
    # whatever the mix, the caller must see exactly what it sees when every event is checked on its own.
    body = chunk("first ") + b"".join(event_bytes(kind, index) for index, kind in enumerate(kinds))
    assert asyncio.run(outcome(body, per_read)) == asyncio.run(outcome(body, 1))


@pytest.mark.parametrize("kinds", [["text", "two", "empty", "text", "finish", "done"],
                                   ["text", "opened", "closed", "two", "text"],
                                   ["text", "huge", "text", "finish", "done"]])
async def test_events_whose_values_do_not_line_up_reach_the_caller_as_one_by_one(kinds: list[str]) -> None:
    # Found in review: a run decoded as whitespace-separated values could count right while its events were
    # malformed, and an integer over 4,300 digits made an event malformed on one path only.
    body = chunk("first ") + b"".join(event_bytes(kind, index) for index, kind in enumerate(kinds))
    assert await outcome(body, 100) == await outcome(body, 1)
