from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from router.engine.retry_after import parse_go_duration, retry_after_seconds

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC).timestamp()
DAY = 86_400.0


def wait(headers: dict[str, str], now: float = NOW) -> float | None:
    return retry_after_seconds(headers, now)


# --- Retry-After and retry-after-ms ----------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("0", 0.0), ("7", 7.0), ("120", 120.0), ("1.5", 1.5),
                                                ("  3  ", 3.0), ("007", 7.0)])
def test_retry_after_in_seconds(value: str, seconds: float) -> None:
    assert wait({"Retry-After": value}) == seconds


def test_retry_after_ms_is_milliseconds_and_wins_over_retry_after() -> None:
    assert wait({"retry-after-ms": "1500", "retry-after": "30"}) == 1.5
    assert wait({"retry-after-ms": "0.5"}) == 0.0005


@pytest.mark.parametrize("value", [
    "Sun, 01 Mar 2026 12:00:30 GMT",        # IMF-fixdate
    "Sunday, 01-Mar-26 12:00:30 GMT",       # obsolete RFC 850
    "Sun Mar  1 12:00:30 2026",             # obsolete asctime, no zone: GMT
])
def test_retry_after_http_date_in_any_rfc_9110_form_is_relative_to_now(value: str) -> None:
    assert wait({"Retry-After": value}) == pytest.approx(30.0)


def test_retry_after_date_in_another_zone_is_converted() -> None:
    assert wait({"Retry-After": "Sun, 01 Mar 2026 13:00:10 +0100"}) == pytest.approx(10.0)


def test_retry_after_date_in_the_past_means_now() -> None:
    assert wait({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0


def test_retry_after_date_is_measured_from_the_given_wall_clock() -> None:
    header = {"Retry-After": format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)}
    assert wait(header, now=NOW) == pytest.approx(90.0)
    assert wait(header, now=NOW + 60) == pytest.approx(30.0)


@pytest.mark.parametrize("value", ["", " ", "-1", "-0.5", "nan", "NaN", "inf", "Infinity", "1e3", "1_000",
                                   "+5", "5s", "1.", ".5", "0x10", "١٢", "soon", "120, 60",
                                   "Sun, 31 Feb 2026 12:00:00 GMT", "Sun, 01 Mar 99999 12:00:00 GMT"])
def test_garbage_retry_after_is_ignored_not_zero(value: str) -> None:
    assert wait({"Retry-After": value}) is None
    assert wait({"retry-after-ms": value}) is None


def test_garbage_retry_after_ms_falls_back_to_retry_after() -> None:
    assert wait({"retry-after-ms": "-100", "Retry-After": "4"}) == 4.0


def test_garbage_retry_after_falls_back_to_openai_reset_headers() -> None:
    headers = {"Retry-After": "later", "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"}
    assert wait(headers) == 2.0


@pytest.mark.parametrize("headers", [
    {"Retry-After": "999999"},
    {"retry-after-ms": "100000000000"},
    {"Retry-After": "Fri, 01 Jan 9999 00:00:00 GMT"},
    {"x-ratelimit-reset-requests": "400h"},
])
def test_waits_are_capped_at_a_day(headers: dict[str, str]) -> None:
    assert wait(headers) == DAY


def test_no_relevant_header_means_none() -> None:
    assert wait({}) is None
    assert wait({"content-type": "application/json", "x-request-id": "abc"}) is None


# --- header names ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["retry-after", "Retry-After", "RETRY-AFTER", "rEtRy-AfTeR"])
def test_header_names_match_in_any_case(name: str) -> None:
    assert wait({name: "5"}) == 5.0


def test_aiohttp_style_case_insensitive_multidict_is_accepted() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("X-RateLimit-Remaining-Tokens", "0"),
                                            ("X-RateLimit-Reset-Tokens", "6m0s")]))
    assert retry_after_seconds(headers, NOW) == 360.0


def test_the_first_of_repeated_headers_wins() -> None:
    headers = CIMultiDictProxy(CIMultiDict([("Retry-After", "3"), ("retry-after", "9")]))
    assert retry_after_seconds(headers, NOW) == 3.0


# --- OpenAI x-ratelimit-* --------------------------------------------------------------

RESETS = {"x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "6m0s"}


def test_exhausted_requests_window_uses_the_requests_reset() -> None:
    headers = {**RESETS, "x-ratelimit-remaining-requests": "0", "x-ratelimit-remaining-tokens": "15000"}
    assert wait(headers) == 1.0


def test_exhausted_tokens_window_uses_the_tokens_reset() -> None:
    headers = {**RESETS, "x-ratelimit-remaining-requests": "59", "x-ratelimit-remaining-tokens": "0"}
    assert wait(headers) == 360.0


@pytest.mark.parametrize(("remaining_requests", "remaining_tokens"), [("0", "0"), ("3", "100"), (None, None)])
def test_both_or_neither_exhausted_uses_the_later_reset(
    remaining_requests: str | None, remaining_tokens: str | None
) -> None:
    headers = dict(RESETS)
    if remaining_requests is not None:
        headers["x-ratelimit-remaining-requests"] = remaining_requests
    if remaining_tokens is not None:
        headers["x-ratelimit-remaining-tokens"] = remaining_tokens
    assert wait(headers) == 360.0


def test_only_one_reset_header_present_is_used() -> None:
    assert wait({"x-ratelimit-reset-tokens": "20ms"}) == 0.02
    assert wait({"x-ratelimit-reset-requests": "1h2m3.5s"}) == 3723.5


def test_reset_in_plain_seconds_is_accepted() -> None:
    assert wait({"x-ratelimit-reset-requests": "2.5"}) == 2.5


def test_an_exhausted_window_does_not_borrow_the_other_windows_reset() -> None:
    headers = {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "garbage",
               "x-ratelimit-reset-tokens": "6m0s"}
    assert wait(headers) is None


def test_unparseable_or_negative_resets_are_skipped() -> None:
    assert wait({"x-ratelimit-reset-requests": "-3s", "x-ratelimit-reset-tokens": "4s"}) == 4.0
    assert wait({"x-ratelimit-reset-requests": "soon", "x-ratelimit-reset-tokens": "nan"}) is None


def test_retry_after_takes_precedence_over_reset_headers() -> None:
    assert wait({**RESETS, "Retry-After": "12"}) == 12.0


# --- Go durations ------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("0", 0.0), ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5s", 0.5),
    (".5s", 0.5), ("1.s", 1.0), ("1.5h", 5400.0), ("250us", 0.00025), ("3µs", 3e-6), ("3μs", 3e-6),
    ("40ns", 4e-8), ("1m1m", 120.0), ("-1.5s", -1.5), ("+2s", 2.0), ("-0", 0.0),
])
def test_go_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "s", ".s", "1x", "1 s", "1s2", "--1s", "1.2.3s", "1S", "1sec",
                                  "٣s", "nan", "infs", "1e3s", "-", "1" * 400 + "h"])
def test_malformed_go_durations_are_none(text: str) -> None:
    assert parse_go_duration(text) is None


# --- properties --------------------------------------------------------------------------

_NAMES = ["retry-after", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
          "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "content-type"]
_name = st.one_of(
    st.builds(lambda name, case: case(name), st.sampled_from(_NAMES),
              st.sampled_from([str.lower, str.upper, str.title, str.swapcase])),
    st.text(max_size=10),
)
_value = st.one_of(
    st.sampled_from(["0", "-1", "1e309", "nan", "inf", "-0s", "1s", "6m0s", "2.5", "9" * 30, "9" * 30 + "h",
                     "Sun, 01 Mar 2026 12:00:30 GMT", "Mon, 01 Jan 0001 00:00:00 GMT",
                     "Fri, 31 Dec 9999 23:59:59 GMT", "Sun Mar  1 12:00:30 2026", ""]),
    st.text("0123456789.+-eE _:,µhmsunGMTFriDecJa", max_size=16),  # near-misses of valid values
    st.text(max_size=8),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.integers(-10**20, 10**20).map(str),
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(_name, _value, max_size=7), st.floats(0, 4e9))
def test_any_headers_give_none_or_a_finite_wait_within_a_day(headers: dict[str, str], now: float) -> None:
    result = retry_after_seconds(headers, now)
    assert result is None or (isinstance(result, float) and math.isfinite(result) and 0.0 <= result <= DAY)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_go_durations_as_openai_formats_them_round_trip(h: int, m: int, s: int, ms: int) -> None:
    text = (f"{h}h" if h else "") + (f"{m}m" if h or m else "") + f"{s}.{ms:03d}s"
    assert parse_go_duration(text) == pytest.approx(h * 3600 + m * 60 + s + ms / 1000)
