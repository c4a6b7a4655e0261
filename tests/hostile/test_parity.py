"""The fast front's recogniser never reads a request differently from aiohttp's parser.

`wire.parse_head` says yes only to heads it serves itself; everything else goes to aiohttp. For
every head it says yes to, aiohttp's own (C, llhttp) request parser must accept the same bytes and
read the same request: method, path, version, every header and its value, the body's length, and
whether the connection closes after it. Heads are generated: plain ones, and ones with the bytes
and shapes that parsers disagree on (OWS, obs-fold, bare CR or LF, NUL, DEL, non-ASCII, repeated
or conflicting framing headers, odd Content-Length spellings, too many fields).
"""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_parser import HttpRequestParser
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.server import wire

NAMES = ["Host", "Content-Length", "Connection", "Transfer-Encoding", "Content-Encoding", "Expect", "Upgrade",
         "Proxy-Connection", "Content-Type", "Authorization", "X-Request-ID", "Accept", "Keep-Alive", "TE",
         "Trailer", "X-Custom", "X_Under", "X-A", "Transfer_Encoding", "Content_Length"]
VALUE_BYTES = (" \t!\"#$%&'()*+,-./0123456789:;<=>?@ABCXYZ[\\]^_`abcxyz{|}~" "\x00\x01\x7f\x80\xe9\xff\r\n")
SEPARATORS = [":", ": ", ":\t", ":  ", " :", "\t:"]
# The last: a fullwidth digit five, which str.isdigit() accepts.
LENGTHS = ["0", "5", "12", "05", "+5", "-1", " 5", "5 ", "5,5", "0x5", "1e1", "99999999999999", "", "\uff15"]


def _case(name: str, draw: st.DrawFn) -> str:
    style = draw(st.sampled_from(["as is", "lower", "upper"]))
    return {"as is": name, "lower": name.lower(), "upper": name.upper()}[style]


@st.composite
def heads(draw: st.DrawFn) -> bytes:
    line = draw(st.sampled_from([wire.REQUEST_LINE.decode()] * 6 + [
        "POST /v1/chat/completions HTTP/1.0", "POST  /v1/chat/completions HTTP/1.1",
        "POST /v1/chat/completions HTTP/1.1 ", "post /v1/chat/completions HTTP/1.1"]))
    fields: list[str] = []
    if draw(st.booleans()) or draw(st.booleans()):
        fields.append(f"{_case('Host', draw)}: 127.0.0.1:8080")
    if draw(st.integers(0, 9)):
        fields.append(f"{_case('Content-Length', draw)}: {draw(st.sampled_from(LENGTHS[:3]))}")
    for _ in range(draw(st.integers(0, 6))):
        name = _case(draw(st.sampled_from(NAMES)), draw)
        if name.lower() == "content-length":
            value = draw(st.sampled_from(LENGTHS))
        elif name.lower() in ("connection", "proxy-connection"):
            value = draw(st.sampled_from(["close", "keep-alive", "Close", "keep-alive, close", "upgrade", "x"]))
        else:
            value = draw(st.text(alphabet=VALUE_BYTES, max_size=12))
        fields.append(f"{name}{draw(st.sampled_from(SEPARATORS))}{value}")
    if draw(st.integers(0, 19)) == 0:  # around aiohttp's limit of 128 fields
        fields += [f"X-{i}: v" for i in range(draw(st.integers(120, 130)))]
    if draw(st.integers(0, 9)) == 0:  # a continuation line (obs-fold) somewhere
        fields.insert(draw(st.integers(0, len(fields))), draw(st.sampled_from([" folded", "\tfolded"])))
    return "\r\n".join([line, *fields]).encode("utf-8")


def aiohttp_reads(head: bytes, length: int) -> object:
    """aiohttp's C parser on the head, its blank line and `length` body bytes: its message, or its error."""
    loop = asyncio.new_event_loop()
    try:
        parser = HttpRequestParser(BaseProtocol(loop), loop, 2 ** 16, max_line_size=8190, max_headers=128,
                                   max_field_size=8190)
        try:
            messages, upgraded, tail = parser.feed_data(head + b"\r\n\r\n" + b"x" * length)
        except Exception as exc:  # any refusal by aiohttp is the finding
            return exc
        return messages[0][0] if len(messages) == 1 and not upgraded and not tail else (messages, upgraded, tail)
    finally:
        loop.close()


@pytest.mark.slow  # 3,000 heads through both parsers
@settings(max_examples=3000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(head=heads())
def test_a_head_the_fast_front_serves_is_one_aiohttp_reads_the_same_way(head: bytes) -> None:
    ours = wire.parse_head(head)
    if ours is None:
        return  # aiohttp's to read, and to refuse
    message = aiohttp_reads(head, ours.length)
    assert not isinstance(message, Exception), f"aiohttp refuses what the fast front serves: {message!r}"
    assert not isinstance(message, tuple), f"aiohttp reads more than one request: {message!r}"
    assert message.method == "POST" and message.path == "/v1/chat/completions"  # type: ignore[attr-defined]
    assert tuple(message.version) == (1, 1)  # type: ignore[attr-defined]
    theirs = {name.lower(): value for name, value in message.headers.items()}  # type: ignore[attr-defined]
    assert theirs == dict(ours.headers), head
    assert int(theirs["content-length"]) == ours.length
    assert message.should_close is ours.close, head  # type: ignore[attr-defined]
    assert not message.chunked and message.compression is None and not message.upgrade  # type: ignore[attr-defined]


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(head=heads(), cuts=st.lists(st.integers(1, 400), max_size=8))
def test_a_head_arriving_in_pieces_is_handed_to_aiohttp_early_only_if_the_fast_front_would_not_serve_it(
        head: bytes, cuts: list[int]) -> None:
    # wire.HeadProgress lets the front hand a head to aiohttp before it is complete. It must never do that
    # to a head the front would serve (a slow client would lose the fast path), whatever the pieces;
    # byte by byte is the hardest case.
    served = wire.parse_head(head) is not None
    start = len(wire.REQUEST_LINE) + 2
    if not head.startswith(wire.REQUEST_LINE + b"\r\n"):
        return  # the front hands it over on its request line, before any HeadProgress
    for ends in (sorted({start + cut for cut in cuts if start + cut < len(head)}), range(start + 1, len(head) + 1)):
        progress = wire.HeadProgress()
        verdicts = [progress.viable(head[:end]) for end in ends if not head[:end].endswith(b"\r\n\r\n")]
        if served:
            assert all(verdicts), head


def test_a_head_that_breaks_the_rules_is_handed_over_before_it_is_complete() -> None:
    # What the llhttp corpus showed (tests/hostile/test_request_corpora.py): each of these got a 408 after
    # head_timeout_s from the fast front and an immediate 400 from aiohttp.
    line = wire.REQUEST_LINE + b"\r\n"
    for partial in [b"Content-Length: 1000000000000000000000\r\n", b"Content-Length: 1\r\nContent-Length: 2\r\n",
                    b"Content-Length: 3\r\n\rabc", b" Host: foo", b"Foo: abc\nBar", b"Transfer_Encoding: chunked\r\n",
                    b": empty name", b"Host: a\r\nX: a\x00"]:
        assert not wire.HeadProgress().viable(line + partial), partial
    for partial in [b"Host: a\r\n", b"Host: a\r", b"Content-Length: 12", b"X-A:", b"X-Long-Na"]:
        assert wire.HeadProgress().viable(line + partial), partial


def test_the_generator_reaches_both_answers() -> None:
    # Not a vacuous property: plain heads are served by the fast front, odd ones left to aiohttp.
    plain = b"POST /v1/chat/completions HTTP/1.1\r\nHost: h\r\nContent-Length: 5"
    assert wire.parse_head(plain) is not None
    assert not isinstance(aiohttp_reads(plain, 5), Exception)
    assert wire.parse_head(plain + b"\r\nX-A: nul\x00") is None
