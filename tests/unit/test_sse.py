from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.upstream.sse import DONE_EVENT, SseEvent, SseParser, SseTooLarge, encode_event

# --- helpers -----------------------------------------------------------------------------


def feed_all(chunks: list[bytes], parser: SseParser | None = None) -> tuple[list[SseEvent], bool]:
    parser = parser or SseParser()
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    return events, parser.finish()


def split_at(stream: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(stream)]
    return [stream[a:b] for a, b in itertools.pairwise(bounds)]


def byte_by_byte(stream: bytes) -> list[bytes]:
    return [stream[i:i + 1] for i in range(len(stream))]


def reference_parse(stream: bytes) -> tuple[list[tuple[int, int, str, str | None, str | None]], bool]:
    """A literal, byte-at-a-time reading of the WHATWG rules, with the span of each event.

    Returns (start, end, data, event, id) per dispatched event, where stream[start:end]
    is its raw, and whether the stream ended inside a block with a non-comment line.
    """
    pos = 3 if stream.startswith(b"\xef\xbb\xbf") else 0
    lines: list[tuple[int, bytes, int]] = []  # (start, content, end incl. terminator)
    start = pos
    while pos < len(stream):
        byte = stream[pos]
        if byte == 10 or byte == 13:
            end = pos + 2 if stream[pos:pos + 2] == b"\r\n" else pos + 1
            lines.append((start, stream[start:pos], end))
            start = pos = end
        else:
            pos += 1
    partial = stream[start:]

    events = []
    block_start: int | None = None
    data: list[bytes] = []
    event_type = b""
    last_id: str | None = None
    pending: list[bytes] = []
    for line_start, content, line_end in lines:
        if not content:
            if block_start is not None and data:
                events.append((block_start, line_end, b"\n".join(data).decode("utf-8", "replace"),
                               event_type.decode("utf-8", "replace") or None, last_id))
            block_start, data, event_type, pending = None, [], b"", []
            continue
        if block_start is None:
            block_start = line_start
        pending.append(content)
        if content.startswith(b":"):
            continue
        name, colon, value = content.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event_type = value
        elif name == b"id" and b"\0" not in value:
            last_id = value.decode("utf-8", "replace")
    if partial:
        pending.append(partial)
    truncated = any(not line.startswith(b":") for line in pending)
    return events, truncated


def expected_raw(stream: bytes, start: int, end: int, cuts: set[int]) -> bytes:
    # An event ending in a CR that is the last byte of a chunk is dispatched at once; the
    # LF completing that CRLF arrives later and belongs to no event.
    if stream[end - 2:end] == b"\r\n" and end - 1 in cuts:
        return stream[start:end - 1]
    return stream[start:end]


def as_tuples(events: list[SseEvent]) -> list[tuple[bytes, str, str | None, str | None]]:
    return [(e.raw, e.data, e.event, e.id) for e in events]


CHUNK = (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":'
         b'[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}\n\n')


# --- single events ---------------------------------------------------------------------


def test_a_typical_openai_chunk_is_one_event_with_its_exact_bytes() -> None:
    [event] = SseParser().feed(CHUNK)
    assert event.raw == CHUNK
    assert json.loads(event.data)["choices"][0]["delta"]["content"] == "Hi"
    assert event.event is None and event.id is None
    assert not event.is_done


def test_done_event_constant_parses_as_done() -> None:
    [event] = SseParser().feed(DONE_EVENT)
    assert event.is_done
    assert event.raw == DONE_EVENT == b"data: [DONE]\n\n"


def test_parsed_events_are_ordinary_frozen_dataclass_instances() -> None:
    [event] = SseParser().feed(b"data: x\n\n")
    assert event == SseEvent(raw=b"data: x\n\n", data="x")
    assert hash(event) == hash(SseEvent(raw=b"data: x\n\n", data="x"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        event.data = "y"  # type: ignore[misc]


def test_multiple_data_lines_join_with_newline() -> None:
    [event] = SseParser().feed(b"data: first\ndata: second\ndata:\ndata: third\n\n")
    assert event.data == "first\nsecond\n\nthird"


@pytest.mark.parametrize(("line", "data"), [
    (b"data: x", "x"),
    (b"data:x", "x"),
    (b"data:  x", " x"),
    (b"data: ", ""),
    (b"data:", ""),
    (b"data", ""),
    (b"data: a: b", "a: b"),
])
def test_one_optional_space_after_the_colon_is_stripped(line: bytes, data: str) -> None:
    [event] = SseParser().feed(line + b"\n\n")
    assert event.data == data


def test_event_type_is_reported_and_reset_after_each_event() -> None:
    events = SseParser().feed(b"event: error\ndata: {}\n\ndata: next\n\nevent:\ndata: z\n\n")
    assert [e.event for e in events] == ["error", None, None]


def test_last_event_id_persists_like_eventsource_until_changed() -> None:
    stream = (b"id: 1\ndata: a\n\n"
              b"data: b\n\n"
              b"id: 2\n\n"            # no data: not dispatched, but the id still sticks
              b"data: c\n\n"
              b"id: bad\0id\ndata: d\n\n"  # an id containing NUL is ignored
              b"id\ndata: e\n\n")     # an empty id resets it
    events = SseParser().feed(stream)
    assert [(e.data, e.id) for e in events] == [("a", "1"), ("b", "1"), ("c", "2"), ("d", "2"), ("e", "")]


def test_unknown_fields_and_retry_are_ignored() -> None:
    [event] = SseParser().feed(b"retry: 5000\nfoo: bar\nDATA: shouty\ndata: kept\n\n")
    assert event.data == "kept"
    assert event.raw == b"retry: 5000\nfoo: bar\nDATA: shouty\ndata: kept\n\n"


def test_comment_only_keepalive_produces_no_event() -> None:
    parser = SseParser()
    assert parser.feed(b": ping\n\n") == []
    assert parser.feed(b":\n\n: OPENROUTER PROCESSING\n\n") == []
    [event] = parser.feed(b"data: x\n\n")
    assert event.raw == b"data: x\n\n"


def test_comment_lines_inside_an_event_stay_in_its_raw() -> None:
    [event] = SseParser().feed(b": note\ndata: x\n: trailing\n\n")
    assert event.data == "x"
    assert event.raw == b": note\ndata: x\n: trailing\n\n"


def test_blocks_without_data_produce_no_event() -> None:
    assert SseParser().feed(b"event: ping\n\nid: 3\n\nretry: 10\n\n") == []


def test_blank_lines_between_events_belong_to_no_raw() -> None:
    events = SseParser().feed(b"\n\n\ndata: a\n\n\n\r\n\rdata: b\n\n")
    assert [e.raw for e in events] == [b"data: a\n\n", b"data: b\n\n"]


def test_many_events_in_one_chunk_come_back_in_order() -> None:
    stream = b"".join(encode_event(str(i)) for i in range(500)) + DONE_EVENT
    events = SseParser().feed(stream)
    assert [e.data for e in events] == [*map(str, range(500)), "[DONE]"]
    assert b"".join(e.raw for e in events) == stream


# --- line endings and chunk boundaries -------------------------------------------------


@pytest.mark.parametrize("eol", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_every_spec_line_ending_is_understood(eol: bytes) -> None:
    stream = b"event: e" + eol + b"data: a" + eol + b"data: b" + eol + eol + b"data: c" + eol + eol
    events, truncated = feed_all([stream])
    assert [(e.data, e.event) for e in events] == [("a\nb", "e"), ("c", None)]
    assert b"".join(e.raw for e in events) == stream
    assert not truncated
    assert [(e.data, e.event) for e in feed_all(byte_by_byte(stream))[0]] == [("a\nb", "e"), ("c", None)]


@pytest.mark.parametrize("chunk", [b"data: a\rdata: b\n\n", b"data: a\rdata: b\r\n\r\n", b"data: a\r\n\n"])
def test_a_lone_cr_inside_a_one_event_chunk_still_ends_a_line(chunk: bytes) -> None:
    parser = SseParser()
    parser.feed(b"data: first\n\n")  # past the stream start, where one-event chunks take a shortcut
    [event] = parser.feed(chunk)
    assert event.data == ("a" if chunk.startswith(b"data: a\r\n") else "a\nb")
    assert event.raw == chunk


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    events, truncated = feed_all([stream])
    assert [e.data for e in events] == ["a\nb\nc", "d"]
    assert [e.raw for e in events] == [b"data: a\r\ndata: b\rdata: c\n\r\n", b"data: d\r\r"]
    assert not truncated


def test_a_crlf_split_across_chunks_is_one_line_ending() -> None:
    parser = SseParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\ndata: b\r") == []  # the LF completes the CRLF, no blank line
    [event] = parser.feed(b"\n\r\n")
    assert event.data == "a\nb"
    assert event.raw == b"data: a\r\ndata: b\r\n\r\n"


def test_an_event_ending_in_cr_is_returned_without_waiting_for_the_next_chunk() -> None:
    parser = SseParser()
    [first] = parser.feed(b"data: a\r\n\r")
    assert first.raw == b"data: a\r\n\r"
    [second] = parser.feed(b"\ndata: b\r\n\r\n")  # the leading LF finishes the CRLF above
    assert second.raw == b"data: b\r\n\r\n"
    assert not parser.finish()


def test_an_event_split_inside_a_multibyte_character_decodes_whole() -> None:
    stream = encode_event("héllo €𝄞")
    for cut in range(1, len(stream)):
        events, _ = feed_all([stream[:cut], stream[cut:]])
        assert [e.data for e in events] == ["héllo €𝄞"]


def test_invalid_utf8_is_replaced_instead_of_raising() -> None:
    [event] = SseParser().feed(b"data: ok \xff\xfe \xe2\x82\n\n")
    assert event.data == "ok \ufffd\ufffd \ufffd"
    assert event.raw == b"data: ok \xff\xfe \xe2\x82\n\n"


def test_a_leading_byte_order_mark_is_ignored_even_when_split() -> None:
    stream = b"\xef\xbb\xbfdata: a\n\n"
    for chunks in ([stream], byte_by_byte(stream)):
        events, _ = feed_all(chunks)
        assert [(e.data, e.raw) for e in events] == [("a", b"data: a\n\n")]


def test_a_byte_order_mark_after_the_start_is_not_stripped() -> None:
    # "\ufeffdata" is then an unknown field name, as the spec says.
    assert SseParser().feed(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [SseEvent(b"data: a\n\n", "a")]


# --- end of stream ---------------------------------------------------------------------


@pytest.mark.parametrize("tail", [b"data: x\n", b"data: x", b"dat", b"data: x\r\n", b"event: e\n", b"\xef"])
def test_finish_reports_a_stream_cut_inside_an_event(tail: bytes) -> None:
    parser = SseParser()
    parser.feed(b"data: whole\n\n" + tail)
    assert parser.finish() is True


@pytest.mark.parametrize("tail", [b"", b"\n", b"\r\n\r\n", b": ping\n", b": pi"])
def test_finish_is_clean_after_whole_events_blank_lines_or_comments(tail: bytes) -> None:
    parser = SseParser()
    parser.feed(b"data: whole\n\n" + tail)
    assert parser.finish() is False


def test_finish_on_an_empty_stream_is_clean() -> None:
    assert SseParser().finish() is False


def test_the_partial_event_is_not_returned_by_finish_or_later() -> None:
    events, truncated = feed_all([b"data: a\n\ndata: half"])
    assert [e.data for e in events] == ["a"]
    assert truncated


# --- size limit ------------------------------------------------------------------------


def test_an_event_of_exactly_the_limit_is_accepted() -> None:
    event = encode_event("x" * 10)
    assert [e.data for e in SseParser(max_event_bytes=len(event)).feed(event)] == ["x" * 10]


@pytest.mark.parametrize("chunking", ["whole", "byte_by_byte", "after_another_event"])
def test_an_event_over_the_limit_raises_too_large(chunking: str) -> None:
    event = encode_event("x" * 11)
    parser = SseParser(max_event_bytes=len(event) - 1)
    stream = encode_event("ok") + event if chunking == "after_another_event" else event
    chunks = byte_by_byte(stream) if chunking == "byte_by_byte" else [stream]
    with pytest.raises(SseTooLarge):
        for chunk in chunks:
            parser.feed(chunk)


def test_an_endless_block_raises_instead_of_buffering_forever() -> None:
    parser = SseParser(max_event_bytes=1000)
    with pytest.raises(SseTooLarge):  # a keep-alive stream that never sends a blank line
        for _ in range(1000):
            parser.feed(b": ping\n")


def test_too_large_is_a_value_error_and_leaves_the_parser_failed() -> None:
    parser = SseParser(max_event_bytes=16)
    with pytest.raises(ValueError, match="max_event_bytes=16"):
        parser.feed(b"data: " + b"x" * 100)
    with pytest.raises(SseTooLarge):
        parser.feed(b"\n\n")
    assert parser.finish() is True


def test_the_default_limit_is_one_mebibyte() -> None:
    big = encode_event("x" * (1024 * 1024 - 8))
    assert len(big) == 1024 * 1024
    assert len(SseParser().feed(big)) == 1
    with pytest.raises(SseTooLarge):
        SseParser().feed(encode_event("x" * (1024 * 1024)))


def test_a_large_event_in_small_chunks_is_reassembled() -> None:
    payload = "y" * 200_000
    stream = encode_event(payload)
    events, truncated = feed_all([stream[i:i + 7] for i in range(0, len(stream), 7)])
    assert [e.data for e in events] == [payload]
    assert not truncated


def test_max_event_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        SseParser(max_event_bytes=0)


# --- encode_event ----------------------------------------------------------------------


def test_encode_event_frames_one_line() -> None:
    assert encode_event('{"a":1}') == b'data: {"a":1}\n\n'
    assert encode_event(b"[DONE]") == DONE_EVENT
    assert encode_event("") == b"data: \n\n"


def test_encode_event_puts_each_line_on_its_own_data_line() -> None:
    assert encode_event("a\nb\r\nc\rd\n") == b"data: a\ndata: b\ndata: c\ndata: d\ndata: \n\n"


def test_encode_event_round_trips_text_without_carriage_returns() -> None:
    text = " leading space\n\nünïcödé\ttabs: and colons\n"
    [event] = SseParser().feed(encode_event(text))
    assert event.data == text


# --- properties --------------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)


@st.composite
def split_points(draw: st.DrawFn, stream: bytes) -> list[int]:
    if not stream:
        return []
    return draw(st.lists(st.integers(1, len(stream)), max_size=12))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(_text, st.binary(max_size=20)), max_size=8), st.data())
def test_encoded_events_survive_any_chunking(payloads: list[str | bytes], data: st.DataObject) -> None:
    stream = b"".join(map(encode_event, payloads))
    cuts = data.draw(split_points(stream))
    events, truncated = feed_all(split_at(stream, cuts))

    def normalised(payload: str | bytes) -> str:
        raw = payload.encode() if isinstance(payload, str) else payload
        return raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").decode("utf-8", "replace")

    assert [e.data for e in events] == [normalised(p) for p in payloads]
    assert [e.raw for e in events] == [encode_event(p) for p in payloads]
    assert not truncated


_EOL = st.sampled_from([b"\n", b"\r\n", b"\r"])
_value = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\r\n"), max_size=8)


@st.composite
def event_streams(draw: st.DrawFn) -> bytes:
    """Well-formed streams mixing every line ending, comments, ids, types and blank lines."""
    out = [b"\xef\xbb\xbf"] if draw(st.booleans()) else []
    previous_eol = b""

    def end_line(eol: bytes) -> None:
        nonlocal previous_eol
        # A lone CR then LF would read as one CRLF, merging the two line endings.
        if previous_eol == b"\r" and eol == b"\n":
            eol = b"\r\n"
        out.append(eol)
        previous_eol = eol

    for _ in range(draw(st.integers(0, 5))):
        kinds = draw(st.lists(st.sampled_from(["data", "data", "comment", "event", "id", "retry"]),
                              min_size=1, max_size=5))
        for kind in kinds:
            value = draw(_value).encode()
            if kind == "comment":
                out.append(b":" + value)
            elif kind == "id" and draw(st.booleans()):
                out.append(b"id: " + value + b"\0")
            else:
                out.append(kind.encode() + draw(st.sampled_from([b": ", b":"])) + value)
            end_line(draw(_EOL))
        end_line(draw(_EOL))  # the blank line
        for _ in range(draw(st.integers(0, 2))):
            end_line(draw(_EOL))
    return b"".join(out)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(event_streams(), st.data())
def test_any_chunking_of_a_stream_yields_the_reference_events_and_bytes(
    stream: bytes, data: st.DataObject
) -> None:
    cuts = data.draw(split_points(stream))
    events, truncated = feed_all(split_at(stream, cuts))
    reference, reference_truncated = reference_parse(stream)
    assert as_tuples(events) == [
        (expected_raw(stream, start, end, set(cuts)), d, ev, eid) for start, end, d, ev, eid in reference
    ]
    assert truncated == reference_truncated


_fragment = st.one_of(
    st.sampled_from([b"data", b"data:", b"data: ", b":", b" ", b"event:", b"id:", b"id: 7", b"retry: 1",
                     b"\n", b"\r", b"\r\n", b"\n\n", b"x", b"\xe2\x82\xac", b"\xe2", b"\xff", b"\0",
                     b"\xef\xbb\xbf", b"[DONE]"]),
    st.binary(max_size=6),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_fragment, max_size=40).map(b"".join), st.data())
def test_arbitrary_bytes_parse_like_the_reference_under_any_chunking(stream: bytes, data: st.DataObject) -> None:
    cuts = data.draw(split_points(stream))
    events, truncated = feed_all(split_at(stream, cuts))
    reference, reference_truncated = reference_parse(stream)
    assert as_tuples(events) == [
        (expected_raw(stream, start, end, set(cuts)), d, ev, eid) for start, end, d, ev, eid in reference
    ]
    assert truncated == reference_truncated


@settings(max_examples=150, deadline=None)
@given(st.lists(_fragment, max_size=40).map(b"".join), st.data(), st.integers(1, 24))
def test_arbitrary_bytes_raise_nothing_but_too_large(stream: bytes, data: st.DataObject, limit: int) -> None:
    cuts = data.draw(split_points(stream))
    try:
        events, _ = feed_all(split_at(stream, cuts), SseParser(max_event_bytes=limit))
    except SseTooLarge:
        return
    assert all(len(e.raw) <= limit for e in events)
    reference, _ = reference_parse(stream)  # a limit that was not hit changes nothing
    assert as_tuples(events) == [
        (expected_raw(stream, start, end, set(cuts)), d, ev, eid) for start, end, d, ev, eid in reference
    ]
