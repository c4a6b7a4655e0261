"""The relay's one-pass check of a burst of events (router/engine/plain_runs.py).

It may only say "plain" when checking each event on its own (jsonio.loads, then the relay's
checks and Transcript.track) would have found nothing but text: no malformed event, no error,
no finish_reason, no usage, no tool call, no second choice. Saying "not plain" is always safe
(the events are then checked one by one), so the property tested here is one-sided, on payloads
built to sit on every edge of those rules; the examples check that what providers send for a
burst of tokens is recognised, or the shortcut would never be taken.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.engine.plain_runs import plain_text
from router.engine.transcript import Transcript, payload_of
from router.upstream.sse import SseParser, SseRun


def run_of(payloads: list[bytes]) -> SseRun:
    items = SseParser(runs=True).feed(b"".join(b"data: " + payload + b"\n\n" for payload in payloads))
    assert len(items) == 1 and isinstance(items[0], SseRun), items
    return items[0]


def per_event(run: SseRun) -> Transcript | None:
    """What the per-event path learns from `run`, or None if any event is not plain content."""
    transcript = Transcript()
    transcript.id = "known"  # as when a run is checked: the stream's id was learnt from its first event
    for event in run.events():
        payload = payload_of(event)
        if payload is None or payload.get("error"):
            return None
        transcript.track(payload)
    if transcript.finished or transcript.usage or not transcript.continuable:
        return None
    return transcript


def delta_chunk(content: Any = "tok", **choice: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "logprobs": None, "finish_reason": None,
                         **choice}]}


def dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


EDGES = st.sampled_from([
    None, 0, 1, 0.0, -0.0, 1e400, False, True, "", "x", "stop", [], [0], {}, {"a": 1}, {"message": "boom"},
    "\u00e9", "\ud83d\ude00",
])
KEYS = st.sampled_from(["content", "finish_reason", "index", "delta", "choices", "error", "usage", "tool_calls",
                        "function_call", "role", "id", "logprobs", "refusal"])


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """One event's payload: mostly chunk-shaped, with edge values in the fields the relay reads, and
    sometimes malformed, escaped, duplicated or not an object at all."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from([b"{not json", b"[]", b'"text"', b"null", b"1", b"{}", b'{"a":NaN}',
                                     b'{"a":Infinity}', b'{"choices":[{"delta":{"content":"\\ud800"}}]}',
                                     b'{"\\u0065rror":{"message":"x"}}', b'{"error":{"m":1},"error":null}',
                                     b'{"error":null,"error":{"m":1}}', b'{"choices":[{"index":0,"index":1}]}',
                                     b'{"choices":[{"delta":{"content":"a","content":"b"}}]}',
                                     b'{"x":' + b"[" * 1000 + b"]" * 1000 + b"}",
                                     b'{"x":' + b"[" * 990 + b"]" * 990 + b"}",
                                     b'{"choices":[{"delta":{"cont\\u0065nt":"e"}}]}',
                                     b'{"choices":[{"delta":{"content":"\xff"}}]}', b'{"x":"\xff"}',
                                     b'{"x":12345678901234567890123456789}', b'[DONE]', b" ", b"\t{}",
                                     b"{}{}", b"{} {}", b'{"choices":[{"delta":{"content":"X"}}]}{}', b"}",
                                     b'{"choices":[{"delta":{"content":"X"}}]', b'{"x":[', b"]}",
                                     b'{"n":' + b"1" * 4301 + b"}"]))
    chunk = delta_chunk(draw(st.text(max_size=5) | EDGES))
    choice = chunk["choices"][0]
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["top", "choice", "delta"]))
        target = chunk if where == "top" else choice if where == "choice" else choice.get("delta")
        if isinstance(target, dict):  # an earlier edit may have made the delta a scalar
            target[draw(KEYS)] = draw(EDGES)
    if draw(st.booleans()):
        chunk["choices"] = draw(st.sampled_from([[], None, "x", [choice, choice], [1], [dict(choice, index=1)]]))
    text = json.dumps(chunk, ensure_ascii=draw(st.booleans()),
                      separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])))
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(payloads(), min_size=2, max_size=6))
def test_a_run_called_plain_is_one_the_per_event_checks_pass_with_only_its_text(events: list[bytes]) -> None:
    run = run_of(events)
    texts = plain_text(run)
    if texts is not None:
        transcript = per_event(run)
        assert transcript is not None, "called plain, but an event needed more than its text"
        assert texts == transcript.text and transcript.chunks == run.count


def test_what_providers_send_for_a_burst_of_tokens_is_plain() -> None:
    openai = [dumps(delta_chunk(f"word{index} ")) for index in range(5)]
    with_usage_null = [dumps({**delta_chunk("a"), "usage": None}), dumps({**delta_chunk("b"), "usage": None})]
    spaced = [json.dumps(delta_chunk("é")).encode(), json.dumps(delta_chunk("ü"), ensure_ascii=False).encode()]
    role = [dumps({"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            dumps({"id": "x", "choices": [{"index": 0, "delta": {"content": "hi"}}]})]
    for events, text in ((openai, [f"word{index} " for index in range(5)]), (with_usage_null, ["a", "b"]),
                         (spaced, ["é", "ü"]), (role, ["", "hi"])):
        assert plain_text(run_of(events)) == text


def test_every_event_that_changes_more_than_the_text_makes_the_run_not_plain() -> None:
    plain = dumps(delta_chunk("a"))
    for special in (dumps(delta_chunk(None, finish_reason="stop")),
                    dumps({"id": "x", "choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}),
                    dumps({"error": {"message": "overloaded", "type": "server_error"}}),
                    dumps(delta_chunk(None, delta={"tool_calls": [{"index": 0, "function": {"name": "f"}}]})),
                    dumps(delta_chunk("b", index=1)),
                    b"{not json", b"[DONE]", b""):
        for events in ([special, plain], [plain, special], [plain, special, plain]):
            if special == b"":  # an empty payload: only inside, or the run would end at a blank line
                events = [plain, b" ", plain]
            assert plain_text(run_of(events)) is None, (special, events)


def test_values_that_do_not_line_up_with_events_make_the_run_not_plain() -> None:
    # decode_lines reads whitespace-separated values: two values in one event, compensated by an empty event
    # (or one value spread over two events), would count right while every one of those events is malformed.
    text = dumps(delta_chunk("X"))
    for events in ([text, text + text, b" ", text], [text, text + b" " + text, b"  ", text],
                   [text, b'{"choices":[{"delta":{"content":"X"}}]', b"}", b"{}{}", text],
                   [text, b'{"x":[[', b"]]}", b"{}],[{}", text]):
        assert plain_text(run_of(events)) is None, events
        assert per_event(run_of(events)) is None  # and the per-event path finds a malformed event


def test_an_integer_too_long_for_python_is_valid_json_on_both_paths() -> None:
    # Python refuses to convert integers over 4,300 digits; the per-event path decodes one as a float (as
    # orjson does integers beyond 64 bits), so the event is relayed either way.
    events = [dumps(delta_chunk("a")), b'{"n":' + b"1" * 4301 + b',"choices":[{"delta":{"content":"X"}}]}']
    assert plain_text(run_of(events)) == ["a", "X"]
    transcript = per_event(run_of(events))
    assert transcript is not None and transcript.text == ["a", "X"]


def test_split_last_of_nothing_keeps_the_whole_run() -> None:
    run = run_of([b'{"a":1}', b'{"b":2}'])
    assert run.split_last(0) == (run, [])
    head, tail = run.split_last(1)
    assert head is not None and head.events() == run.events()[:1] and tail == run.events()[1:]
