"""The fast front's recogniser and answer writer (router.server.wire): pure functions, no server."""

from __future__ import annotations

from collections.abc import Callable
from email.utils import formatdate

import pytest

from router.server import wire


def head(*fields: str, line: str = "POST /v1/chat/completions HTTP/1.1") -> bytes:
    return "\r\n".join([line, *fields]).encode("latin-1")


PLAIN = ("Host: 127.0.0.1:8080", "Content-Type: application/json", "Content-Length: 42")


def test_a_plain_chat_request_is_recognised_with_its_headers_case_insensitive() -> None:
    parsed = wire.parse_head(head(*PLAIN, "Authorization: Bearer  sk-1 ", "X-Request-ID: abc"))
    assert parsed is not None
    assert parsed.length == 42 and parsed.close is False
    assert parsed.headers.get("authorization") == "Bearer  sk-1"  # outer whitespace trimmed, inner kept
    assert parsed.headers["X-REQUEST-ID"] == "abc" and "x-request-id" in parsed.headers
    assert parsed.headers.get("X-Missing") is None and "X-Missing" not in parsed.headers
    assert parsed.headers.get("X-Missing", "d") == "d"


@pytest.mark.parametrize("connection, close", [("close", True), ("keep-alive", False), ("Keep-Alive, Close", True)])
def test_connection_close_is_seen(connection: str, close: bool) -> None:
    parsed = wire.parse_head(head(*PLAIN, f"Connection: {connection}"))
    assert parsed is not None and parsed.close is close


def test_an_empty_header_value_is_accepted() -> None:
    parsed = wire.parse_head(head(*PLAIN, "X-Empty:", "X-Blank: \t ", "X-After: a"))
    assert parsed is not None and parsed.headers["x-empty"] == "" and parsed.headers["x-blank"] == ""
    assert parsed.headers["x-after"] == "a"


def test_tabs_around_a_value_are_trimmed_and_kept_inside_it() -> None:
    parsed = wire.parse_head(head(*PLAIN, "X-Tabs:\tinner\tvalue \t", "x-last:z  "))
    assert parsed is not None
    assert parsed.headers["x-tabs"] == "inner\tvalue" and parsed.headers["x-last"] == "z"


@pytest.mark.parametrize("request_line", [
    "GET /v1/chat/completions HTTP/1.1",
    "POST /v1/chat/completions HTTP/1.0",
    "POST /v1/chat/completions?x=1 HTTP/1.1",
    "POST /v1/models HTTP/1.1",
    "POST http://h/v1/chat/completions HTTP/1.1",
    "post /v1/chat/completions HTTP/1.1",
    "POST  /v1/chat/completions HTTP/1.1",
])
def test_any_other_request_line_goes_to_aiohttp(request_line: str) -> None:
    assert wire.parse_head(head(*PLAIN, line=request_line)) is None


@pytest.mark.parametrize("fields", [
    ("Host: h", "Transfer-Encoding: chunked"),                      # no Content-Length framing
    ("Host: h", "Content-Length: 42", "Transfer-Encoding: chunked"),  # smuggling shape
    ("Host: h",),                                                   # no body length at all
    ("Content-Length: 42", "Content-Length: 42"),                  # repeated
    ("Content-Length: 42", "content-length: 43"),                  # repeated, other case
    ("Content-Length: +42",), ("Content-Length: 4 2",), ("Content-Length: 0x2a",), ("Content-Length: -1",),
    ("Content-Length: 99999999999999999999",),
    ("Content-Length: 42", "Content-Encoding: gzip"),
    ("Content-Length: 42", "Expect: 100-continue"),
    ("Content-Length: 42", "Upgrade: websocket"),
    ("Content-Length: 42", "Connection: Upgrade"),
    ("Content-Length: 42", " folded: value"),                      # obs-fold
    ("Content-Length: 42", "X-A: one", "\ttwo"),                    # obs-fold continuation
    ("Content-Length: 42", "X-A : spaced name"),
    ("Content-Length: 42", "X-A"),                                  # no colon
    ("Content-Length: 42", ": no name"),
    ("Content-Length: 42", "X-A: bare\nLF"),
    ("Content-Length: 42", "X-A: bare\rCR"),
    ("Content-Length: 42", "X-A: nul\x00byte"),
    ("Content-Length: 42", "X-A: del\x7f"),
    ("Content-Length: 42", "X-A: caf\xe9"),                          # non-ASCII: aiohttp decodes it its way
    ("Content-Length: 42", "X(A): bad token"),
    ("Content-Length: 42", ""),                                     # an empty line inside the head
])
def test_heads_that_could_be_read_two_ways_go_to_aiohttp(fields: tuple[str, ...]) -> None:
    with_host = fields if any(f.lower().startswith("host:") for f in fields) else ("Host: h", *fields)
    assert wire.parse_head(head(*with_host)) is None


@pytest.mark.parametrize("fields", [
    ("Content-Length: 42",),                                             # HTTP/1.1 without Host: aiohttp's 400
    ("Host: h", "Content-Length: 42", *(f"X-{i}: v" for i in range(127))),  # 129 fields: aiohttp's 400
    ("Host: h", "Content-Length: 42", "Proxy-Connection: close"),      # llhttp honours it as Connection
])
def test_heads_aiohttp_refuses_or_reads_differently_go_to_aiohttp(fields: tuple[str, ...]) -> None:
    assert wire.parse_head(head(*fields)) is None


def test_128_fields_are_recognised() -> None:
    assert wire.parse_head(head("Host: h", "Content-Length: 42", *(f"X-{i}: v" for i in range(126)))) is not None


def test_a_length_over_the_body_limit_is_recognised_for_the_front_to_refuse_at_once() -> None:
    parsed = wire.parse_head(head("Host: h", "Content-Length: 99999999999"))
    assert parsed is not None and parsed.length == 99_999_999_999


def test_an_answer_head_has_status_headers_length_and_date() -> None:
    out = wire.answer_head(429, {"Retry-After": "2", "x-request-id": "r1"}, length=10, close=False)
    lines = out.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 429 Too Many Requests"
    assert lines[1:4] == [b"Retry-After: 2", b"x-request-id: r1", b"Content-Length: 10"]
    assert lines[4].startswith(b"Date: ") and lines[4].endswith(b" GMT")
    assert out.endswith(b"\r\n\r\n") and b"Connection" not in out


@pytest.mark.parametrize("answer", [
    lambda: wire.answer_head(200, {}, length=1, close=False),
    lambda: wire.refusal(408, "slow", code="head_timeout"),  # the canned answers too (one was built at import)
])
def test_the_date_is_the_time_of_the_answer(answer: Callable[[], bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    for now in (1_700_000_000.2, 1_700_000_000.9, 1_700_003_601.5):
        monkeypatch.setattr(wire.time, "time", lambda now=now: now)
        assert f"\r\nDate: {formatdate(int(now), usegmt=True)}\r\n".encode() in answer()


def test_a_chunked_head_and_a_closing_head() -> None:
    out = wire.answer_head(200, {}, length=None, close=True)
    assert b"\r\nTransfer-Encoding: chunked\r\n" in out and b"\r\nConnection: close\r\n" in out
    assert b"Content-Length" not in out


@pytest.mark.parametrize("value", ["a\r\nInjected: yes", "a\nInjected: yes", "a\rb"])
def test_a_header_value_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="line break"):
        wire.answer_head(200, {"Content-Type": value}, length=0, close=False)


def test_chunk_framing() -> None:
    assert wire.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
    assert wire.chunk(b"a" * 26) == b"1a\r\n" + b"a" * 26 + b"\r\n"
    assert wire.LAST_CHUNK == b"0\r\n\r\n"
