"""Where a stream goes after its commit point: the continuation obeys the classifier.

A verdict after the first event (a stall, a cut, an error event) is recorded against the
attempt like any other, so the planner sees it: a fail-over verdict takes the target out of
the plan, a cut may go back to it within `max_attempts_per_target`. Driven through
`Router.stream` with a scripted transport on a fake clock: nothing sleeps.
"""

from __future__ import annotations

import json

from router import StreamInterrupted
from router.policy.model import RetryPolicy, Target
from router.upstream.errors import BodyCut, IdleTimeout
from tests.support.memory import REQUEST, MemoryReply, ScriptedTransport, harness, sse_body, stream_reply

A = Target("a", "model-a", priority=0)
B = Target("b", "model-b", priority=1)
PIECES = ["The ", "quick ", "brown fox."]
FULL = "".join(PIECES)
SHOWN = PIECES[0]  # what the caller saw before the stream broke: the role chunk and the first piece


def broken(failure: Exception) -> MemoryReply:
    return stream_reply(sse_body(PIECES), fail_after=2, failure=failure)  # type: ignore[arg-type]


def continuation() -> MemoryReply:
    return stream_reply(sse_body([FULL[len(SHOWN):]]))


def error_event_after_the_first_piece(code: str) -> MemoryReply:
    events = sse_body(PIECES[:1], finish=False, done=False)
    error = {"error": {"message": "boom", "type": "error", "code": code}}
    return stream_reply(events + b"data: " + json.dumps(error).encode() + b"\n\n")


async def relay(transport: ScriptedTransport, **policy: object) -> tuple[str, int, list[float]]:
    h = harness([A, B], transport, prefill={"a", "b"}, **policy)  # both accept a prefill: both are candidates
    text = []
    async with h.router.stream({**REQUEST, "stream": True}) as stream:
        async for event in stream:
            if not event.is_done:
                for choice in json.loads(event.data).get("choices", ()):
                    text.append(choice["delta"].get("content") or "")
        attempts = stream.attempts
    assert transport.unused() == {}
    return "".join(text), attempts, h.sleep.delays


def prefill_sent(transport: ScriptedTransport, index: int) -> object:
    return json.loads(transport.sent[index].body)["messages"][-1]


async def test_a_stall_after_commit_is_continued_on_another_target_at_once() -> None:
    transport = ScriptedTransport(a=[broken(IdleTimeout("no data for 30s"))], b=[continuation()])
    text, attempts, delays = await relay(transport)
    assert transport.providers == ["a", "b"]  # never back to the target that stalled
    assert text == FULL and attempts == 2
    assert delays == []  # a switch is immediate: nothing waited
    assert prefill_sent(transport, 1) == {"role": "assistant", "content": SHOWN}


async def test_an_error_event_with_a_fail_over_verdict_is_continued_on_another_target() -> None:
    transport = ScriptedTransport(a=[error_event_after_the_first_piece("invalid_api_key")], b=[continuation()])
    text, _, _ = await relay(transport)
    assert transport.providers == ["a", "b"]
    assert text == FULL


async def test_a_cut_may_go_back_to_the_same_target_within_its_per_target_cap() -> None:
    transport = ScriptedTransport(a=[broken(BodyCut("reset mid-body")), continuation()])
    text, attempts, delays = await relay(transport, retry=RetryPolicy(max_attempts_per_target=2))
    assert transport.providers == ["a", "a"]
    assert text == FULL and attempts == 2
    assert len(delays) == 1 and 0.0 < delays[0] <= 0.25  # the same target again: after a backoff


async def test_a_cut_goes_elsewhere_once_the_per_target_cap_is_spent() -> None:
    transport = ScriptedTransport(a=[broken(BodyCut("reset mid-body"))], b=[continuation()])
    text, _, _ = await relay(transport, retry=RetryPolicy(max_attempts_per_target=1))
    assert transport.providers == ["a", "b"]
    assert text == FULL


async def test_a_stall_with_no_other_target_ends_with_an_error_event_not_a_second_stall() -> None:
    transport = ScriptedTransport(a=[broken(IdleTimeout("no data for 30s"))])
    h = harness([A], transport, prefill={"a"})
    seen = []
    try:
        async with h.router.stream({**REQUEST, "stream": True}) as stream:
            async for event in stream:
                seen.append(event)
    except StreamInterrupted as exc:
        assert exc.reason == "stream_stall"
    else:
        raise AssertionError("a stalled stream with nowhere to continue must end with an error")
    assert transport.providers == ["a"]
    assert not any(event.is_done for event in seen)
