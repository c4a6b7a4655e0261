"""SSE parser fuzzing: random streams, random cuts, random chunking.

Properties (test_sse.py checks the parser against a reference reading of the spec;
these check what the relay relies on):

- a stream of JSON events cut at any byte and fed in any chunks never yields a
  partial payload: every event yielded is one of the events sent, whole, in order,
  and `finish()` says whether the cut fell inside an event;
- two different chunkings of the same bytes yield the same events (raw and data);
- no input makes it hang or go quadratic: every example runs under a time limit,
  and adversarial inputs fed byte by byte cost linear, not quadratic, CPU time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.upstream.sse import SseEvent, SseParser, SseRun, SseTooLarge

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class TookTooLong(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds: float) -> Iterator[None]:
    """Turn a hang into a test failure (SIGALRM: Unix, main thread, which is where pytest runs tests)."""

    def expire(signum: int, frame: object) -> None:
        raise TookTooLong(f"no result within {seconds}s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(stream)}), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def parse(chunks: list[bytes], parser: SseParser | None = None) -> tuple[list[SseEvent], bool]:
    parser = parser or SseParser()
    with time_limit(5.0):
        events = [event for chunk in chunks for event in parser.feed(chunk)]
        return events, parser.finish()


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=15)
json_objects = st.dictionaries(
    st.text(max_size=6),
    st.recursive(json_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=4), c, max_size=3),
                 max_leaves=6),
    min_size=1, max_size=4)
EOLS = st.sampled_from([b"\n", b"\r\n", b"\r"])


@st.composite
def json_event_streams(draw: st.DrawFn) -> tuple[bytes, list[Any], list[int]]:
    """A provider stream: JSON events (one or several `data:` lines each, with comments, `event:` and
    blank lines between), the payloads, and the offset just past each event's blank line."""
    out = bytearray()
    payloads: list[Any] = []
    ends: list[int] = []
    for _ in range(draw(st.integers(1, 6))):
        payload = draw(json_objects)
        text = json.dumps(payload, ensure_ascii=draw(st.booleans()), indent=draw(st.sampled_from([None, None, 1])))
        eol = draw(EOLS)
        if draw(st.booleans()):
            out += b": keep-alive" + eol + eol
        if draw(st.booleans()):
            out += b"event: chunk" + eol
        # An indented dump spans several lines: each becomes its own data line, joined back by "\n".
        for line in text.encode().split(b"\n"):
            out += b"data:" + draw(st.sampled_from([b" ", b""])) + line + eol
        # A lone CR followed by LF would read as one CRLF line ending, not as the blank line.
        blank = b"\r\n" if eol == b"\r" else eol
        out += blank
        ends.append(len(out))
        payloads.append(payload)
    return bytes(out), payloads, ends


@FUZZ
@given(json_event_streams(), st.data())
@pytest.mark.slow
def test_a_cut_stream_yields_only_whole_events_whatever_the_chunking(
        sample: tuple[bytes, list[Any], list[int]], data: st.DataObject) -> None:
    stream, payloads, ends = sample
    cut = data.draw(st.integers(0, len(stream)), label="cut")
    sent = stream[:cut]
    chunks = chunked(sent, data.draw(st.lists(st.integers(1, max(1, len(sent))), max_size=10), label="splits"))

    events, truncated = parse(chunks)

    decoded = [json.loads(event.data) for event in events]  # a partial payload would not parse
    assert decoded == payloads[:len(decoded)]  # the events sent, whole, in order
    whole = sum(end <= cut for end in ends)
    # An event is whole once its blank line has begun: a CR at the very end of the cut already ends it.
    assert len(decoded) in (whole, whole + 1)
    if len(decoded) == whole + 1:
        assert sent.endswith(b"\r") and stream[cut:cut + 1] == b"\n"
    assert all(event.raw and event.raw in stream for event in events)
    # finish() reports a cut inside an event: after the last whole one, a line other than a comment.
    rest = b"" if len(decoded) > whole else sent[ends[whole - 1] if whole else 0:]
    assert truncated == any(line and not line.startswith(b":") for line in rest.splitlines()), rest


@FUZZ
@given(st.lists(st.sampled_from([b"data: ", b"data:", b"\n", b"\r", b"\r\n", b":", b"event: x", b"id: 1", b"{",
                                 b'"a"', b"}", b"[DONE]", b"\xef\xbb\xbf", b"\xe2\x82", b"\xac", b"\0", b" "])
                | st.binary(max_size=8), max_size=60).map(b"".join),
       st.lists(st.integers(1, 400), max_size=12), st.lists(st.integers(1, 400), max_size=12))
def test_two_chunkings_of_the_same_bytes_yield_the_same_events(stream: bytes, cuts_a: list[int],
                                                               cuts_b: list[int]) -> None:
    first, first_truncated = parse(chunked(stream, cuts_a))
    second, second_truncated = parse(chunked(stream, cuts_b))
    whole, whole_truncated = parse([stream])

    def seen(events: list[SseEvent]) -> list[tuple[str, str | None, str | None]]:
        return [(e.data, e.event, e.id) for e in events]

    assert seen(first) == seen(second) == seen(whole)
    assert first_truncated == second_truncated == whole_truncated
    # raw bytes are the same too, except that an LF after a chunk-final CR belongs to no event
    assert [e.raw.rstrip(b"\n") for e in first] == [e.raw.rstrip(b"\n") for e in whole]


@FUZZ
@given(st.binary(max_size=3000), st.lists(st.integers(1, 3000), max_size=20), st.integers(1, 64))
def test_random_bytes_raise_nothing_but_too_large_and_respect_the_limit(stream: bytes, cuts: list[int],
                                                                        limit: int) -> None:
    try:
        events, _ = parse(chunked(stream, cuts), SseParser(max_event_bytes=limit))
    except SseTooLarge:
        return
    assert all(len(event.raw) <= limit for event in events)


# Adversarial shapes, as (unit, repeat count for the small size); fed one byte at a time.
ADVERSARIAL = {
    "one line without an end": (b"x", 24_000),
    "lone CRs": (b"data: a\r", 3_000),
    "blank lines only": (b"\n", 24_000),
    "CR LF pairs": (b"\r\n", 12_000),
    "a huge comment": (b"c", 24_000),
    "many tiny events": (b"data: {}\n\n", 2_400),
    "LF CR alternation": (b"data: x\n\r", 3_000),
}
PREFIX = {"one line without an end": b"data: ", "a huge comment": b":"}


def cpu_to_feed_byte_by_byte(stream: bytes) -> tuple[float, int]:
    """CPU seconds (best of two) to feed `stream` one byte at a time, and the events it yielded."""
    best, count = math.inf, 0
    for _ in range(2):
        started = time.process_time()
        with time_limit(20.0):
            parser = SseParser()
            count = sum(len(parser.feed(stream[i:i + 1])) for i in range(len(stream)))
            parser.finish()
        best = min(best, time.process_time() - started)
    return best, count


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_streams_fed_byte_by_byte_stay_linear(name: str) -> None:
    unit, repeat = ADVERSARIAL[name]
    small = PREFIX.get(name, b"") + unit * repeat
    large = PREFIX.get(name, b"") + unit * repeat * 4

    small_cost, _ = cpu_to_feed_byte_by_byte(small)
    large_cost, count = cpu_to_feed_byte_by_byte(large)

    # Four times the bytes: about four times the work when linear, sixteen when quadratic.
    assert large_cost < 8 * small_cost + 0.05, (small_cost, large_cost)
    assert count == len(parse([large])[0])


def test_an_unterminated_block_over_the_limit_fails_instead_of_growing() -> None:
    parser = SseParser(max_event_bytes=1024)
    with pytest.raises(SseTooLarge):
        for _ in range(2000):
            parser.feed(b"data: xxxxxxxx")
    with pytest.raises(SseTooLarge):
        parser.feed(b"\n\n")  # stays failed


def parse_runs(chunks: list[bytes], limit: int) -> tuple[list[SseEvent] | str, bool]:
    """What `SseParser(runs=True)` yields, runs taken apart into their events (or "too large")."""
    parser, out = SseParser(limit, runs=True), []
    try:
        for piece in chunks:
            for item in parser.feed(piece):
                out.extend(item.events() if isinstance(item, SseRun) else [item])
    except SseTooLarge:
        return "too large", True
    return out, parser.finish()


@FUZZ
@given(st.lists(st.sampled_from([b"data: ", b"data: {}", b"data:", b"\n", b"\n\n", b"\r", b":", b"event: x",
                                 b"id: 1", b'{"a":1}', b"[DONE]", b"\xef\xbb\xbf", b"\xe2\x82", b" "])
                | st.binary(max_size=8), max_size=80).map(b"".join),
       st.lists(st.integers(1, 400), max_size=12), st.integers(1, 300))
def test_runs_are_the_same_events_as_one_by_one(stream: bytes, cuts: list[int], limit: int) -> None:
    # A run (a burst of one-line data: events kept as bytes) is only a grouping: taken apart, the events,
    # their raw bytes and ids, the truncation and the size limit are exactly the per-event parser's.
    chunks = chunked(stream, cuts)
    plain: list[SseEvent] | str
    try:
        plain, truncated = parse(chunks, SseParser(limit))
    except SseTooLarge:
        plain, truncated = "too large", True
    assert parse_runs(chunks, limit) == (plain, truncated)


@FUZZ
@given(json_event_streams(), st.data())
def test_runs_of_json_events_are_the_same_events_as_one_by_one(sample: tuple[bytes, list[Any], list[int]],
                                                                data: st.DataObject) -> None:
    stream = sample[0]
    chunks = chunked(stream, data.draw(st.lists(st.integers(1, max(1, len(stream))), max_size=6), label="splits"))
    assert parse_runs(chunks, 1 << 20) == parse(chunks)
