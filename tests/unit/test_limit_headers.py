"""Limit headers read on every answer (engine/limit_headers.py), and when they mean "stop sending now".

The router reads what a provider says about its remaining rate limit on successes too, so it can
hold off *before* the 429. Three families are covered: OpenAI's `x-ratelimit-*` headers (with the
examples from OpenAI's rate-limit documentation, resets in seconds or Go durations), and the three
generations of the IETF draft (draft-ietf-httpapi-ratelimit-headers): the current structured
`RateLimit: "policy";r=..;t=..` list, the -05/-06 `RateLimit: limit=.., remaining=.., reset=..`
item, and the earliest `RateLimit-Remaining` / `RateLimit-Reset` pair.

The contract that matters most is the negative one: a value that does not parse never throttles
(a provider's broken header must not stop traffic), and a reset is capped like a Retry-After, so
no header can take a provider out for longer than `MAX_RETRY_AFTER_S`.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from router.engine.limit_headers import LimitHint, read_limits, throttle_for
from router.engine.retry_after import MAX_RETRY_AFTER_S

FUZZ = settings(max_examples=300, deadline=None)


def headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Response headers as both HTTP clients hand them over: case-insensitive, repeats kept."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def openai(remaining_requests: str | None = None, reset_requests: str | None = None,
           remaining_tokens: str | None = None, reset_tokens: str | None = None) -> CIMultiDictProxy[str]:
    pairs = [(name, value) for name, value in (
        ("x-ratelimit-remaining-requests", remaining_requests), ("x-ratelimit-reset-requests", reset_requests),
        ("x-ratelimit-remaining-tokens", remaining_tokens), ("x-ratelimit-reset-tokens", reset_tokens),
    ) if value is not None]
    return headers(*pairs)


# --- OpenAI ------------------------------------------------------------------------------------

# The example response headers of OpenAI's rate-limit guide.
OPENAI_DOCS_EXAMPLE = headers(
    ("x-ratelimit-limit-requests", "60"),
    ("x-ratelimit-limit-tokens", "150000"),
    ("x-ratelimit-remaining-requests", "59"),
    ("x-ratelimit-remaining-tokens", "149984"),
    ("x-ratelimit-reset-requests", "1s"),
    ("x-ratelimit-reset-tokens", "6m0s"),
)


def test_openai_documentation_example_is_read_in_full() -> None:
    assert read_limits(OPENAI_DOCS_EXAMPLE) == LimitHint(requests_remaining=59, requests_reset_s=1.0,
                                                         tokens_remaining=149984, tokens_reset_s=360.0)


def test_openai_documentation_example_leaves_plenty_so_nothing_is_held_back() -> None:
    hint = read_limits(OPENAI_DOCS_EXAMPLE)
    assert hint is not None
    assert throttle_for(hint, others_in_flight=0, tokens_needed=1000) is None
    assert throttle_for(hint, others_in_flight=10, tokens_needed=1000) is None


@pytest.mark.parametrize(("value", "seconds"), [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1m30.5s", 90.5), ("2h", 7200.0), ("1.5s", 1.5),
    ("500us", 0.0005), ("0s", 0.0), ("0", 0.0),
    ("30", 30.0), ("1.5", 1.5), ("0.25", 0.25), ("  7  ", 7.0), ("007", 7.0),
])
def test_openai_resets_in_plain_seconds_or_go_durations(value: str, seconds: float) -> None:
    hint = read_limits(openai(remaining_requests="0", reset_requests=value, remaining_tokens="0",
                              reset_tokens=value))
    assert hint is not None
    assert hint.requests_reset_s == pytest.approx(seconds)
    assert hint.tokens_reset_s == pytest.approx(seconds)


def test_openai_requests_alone_or_tokens_alone_are_enough() -> None:
    assert read_limits(openai(remaining_requests="3", reset_requests="2s")) == LimitHint(
        requests_remaining=3, requests_reset_s=2.0)
    tokens_only = read_limits(openai(remaining_tokens="120", reset_tokens="20ms"))
    assert tokens_only is not None
    assert (tokens_only.requests_remaining, tokens_only.requests_reset_s) == (None, None)
    assert tokens_only.tokens_remaining == 120 and tokens_only.tokens_reset_s == pytest.approx(0.02)


def test_a_reset_without_a_remaining_count_says_nothing() -> None:
    assert read_limits(headers(("x-ratelimit-reset-requests", "1s"), ("x-ratelimit-reset-tokens", "6m0s"))) is None
    assert read_limits(headers(("x-ratelimit-limit-requests", "60"))) is None


def test_no_limit_headers_at_all_is_none() -> None:
    assert read_limits(headers()) is None
    assert read_limits(headers(("content-type", "application/json"), ("retry-after", "5"))) is None


def test_openai_headers_win_over_the_ietf_fields() -> None:
    both = headers(("RateLimit", '"default";r=0;t=30'), ("x-ratelimit-remaining-requests", "59"),
                   ("x-ratelimit-reset-requests", "1s"))
    assert read_limits(both) == LimitHint(requests_remaining=59, requests_reset_s=1.0)


# --- IETF draft-ietf-httpapi-ratelimit-headers ---------------------------------------------------

def test_ietf_structured_field_with_one_policy() -> None:
    hint = read_limits(headers(("RateLimit-Policy", '"default";q=100;w=60'), ("RateLimit", '"default";r=0;t=30')))
    assert hint == LimitHint(requests_remaining=0, requests_reset_s=30.0)


def test_ietf_structured_field_with_remaining_capacity() -> None:
    assert read_limits(headers(("RateLimit", '"default";r=50;t=30'))) == LimitHint(requests_remaining=50,
                                                                                  requests_reset_s=30.0)


def test_ietf_structured_field_takes_a_token_name_and_parameters_in_any_order() -> None:
    assert read_limits(headers(("RateLimit", "burst;t=12;r=3"))) == LimitHint(requests_remaining=3,
                                                                             requests_reset_s=12.0)


@pytest.mark.parametrize(("field", "remaining", "reset"), [
    ('"hour";r=40;t=1800, "minute";r=0;t=20', 0, 20.0),       # the exhausted one decides
    ('"minute";r=0;t=20, "hour";r=40;t=1800', 0, 20.0),       # whatever the order
    ('"burst";r=5;t=1, "day";r=2;t=36000', 2, 36000.0),       # the fewest remaining decides
    ('"a";r=0;t=5, "b";r=0;t=60', 0, 60.0),                   # a tie: the longer wait decides
    ('"a";r=0;t=60, "b";r=0;t=5', 0, 60.0),
    ('"a";r=0, "b";r=0;t=9', 0, 9.0),                          # a known reset beats an unknown one
    ('"a";q=100;w=60, "b";r=7;t=3', 7, 3.0),                  # a member without r is skipped
])
def test_ietf_structured_list_of_policies_the_tightest_decides(field: str, remaining: int, reset: float) -> None:
    assert read_limits(headers(("RateLimit", field))) == LimitHint(requests_remaining=remaining,
                                                                  requests_reset_s=reset)


def test_ietf_structured_list_with_no_readable_member_is_none() -> None:
    assert read_limits(headers(("RateLimit", '"a";q=100;w=60'))) is None
    assert read_limits(headers(("RateLimit", '"a";r=lots;t=30, "b";r=-1;t=5'))) is None


def test_ietf_draft_05_single_item_form() -> None:
    hint = read_limits(headers(("RateLimit", "limit=100, remaining=0, reset=30")))
    assert hint == LimitHint(requests_remaining=0, requests_reset_s=30.0)
    assert read_limits(headers(("RateLimit", "limit=100, remaining=50, reset=5"))) == LimitHint(
        requests_remaining=50, requests_reset_s=5.0)


def test_ietf_draft_05_form_in_another_order_and_without_spaces() -> None:
    assert read_limits(headers(("RateLimit", "remaining=3,reset=7,limit=10"))) == LimitHint(
        requests_remaining=3, requests_reset_s=7.0)
    assert read_limits(headers(("RateLimit", "reset=7, remaining=3"))) == LimitHint(
        requests_remaining=3, requests_reset_s=7.0)


def test_ietf_earliest_draft_separate_fields() -> None:
    hint = read_limits(headers(("RateLimit-Limit", "10"), ("RateLimit-Remaining", "0"), ("RateLimit-Reset", "7")))
    assert hint == LimitHint(requests_remaining=0, requests_reset_s=7.0)


def test_ietf_earliest_draft_remaining_without_reset() -> None:
    assert read_limits(headers(("RateLimit-Remaining", "4"))) == LimitHint(requests_remaining=4)
    assert read_limits(headers(("RateLimit-Reset", "7"))) is None  # a reset alone says nothing


# --- case-insensitivity ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["x-ratelimit-remaining-requests", "X-RateLimit-Remaining-Requests",
                                  "X-RATELIMIT-REMAINING-REQUESTS", "x-RaTeLiMiT-rEmAiNiNg-ReQuEsTs"])
def test_openai_header_names_in_any_case(name: str) -> None:
    hint = read_limits(headers((name, "0"), ("X-RateLimit-Reset-Requests", "1s")))
    assert hint == LimitHint(requests_remaining=0, requests_reset_s=1.0)


@pytest.mark.parametrize(("pairs", "expected"), [
    ((("ratelimit", '"default";r=0;t=30'),), LimitHint(0, 30.0)),
    ((("RATELIMIT", "limit=100, remaining=0, reset=30"),), LimitHint(0, 30.0)),
    ((("ratelimit-remaining", "0"), ("RATELIMIT-RESET", "7")), LimitHint(0, 7.0)),
])
def test_ietf_field_names_in_any_case(pairs: tuple[tuple[str, str], ...], expected: LimitHint) -> None:
    assert read_limits(headers(*pairs)) == expected


def test_ietf_draft_05_form_is_recognised_whatever_the_case_of_its_first_key() -> None:
    # The form is recognised case-insensitively; its (lower-case, per RFC 8941) keys are then read.
    assert read_limits(headers(("RateLimit", "LIMIT=100, remaining=0, reset=30"))) == LimitHint(0, 30.0)


def test_repeated_header_the_first_wins() -> None:
    hint = read_limits(headers(("x-ratelimit-remaining-requests", "5"), ("X-RateLimit-Remaining-Requests", "0"),
                               ("x-ratelimit-reset-requests", "1s")))
    assert hint is not None and hint.requests_remaining == 5


# --- garbage never throttles ---------------------------------------------------------------------

GARBAGE_COUNTS = ["-1", "-0", "+5", "abc", "1e3", "1.5", "NaN", "nan", "inf", "Infinity", "-inf", "0x10", "1_000",
                  "\u0661\u0662", "\u00b2", "\uff10", "9" * 16, "1" * 5000, "", "   ", "5 5", "5,0"]
GARBAGE_RESETS = ["-1", "-1s", "-0.5", "-6m0s", "abc", "soon", "1e3", "NaN", "nan", "inf", "Infinity", "+inf",
                  "\u0661s", "\u0661\u0662", "\uff15", "1_000", "0x10", "1.", ".5", "5 s", "s", "ms", "1d", "1y",
                  "9" * 16, "1" * 65, "1s" * 40, "1" * 5000, "", "   ", "1s, 2s"]
# Inside a structured field a space, comma or semicolon ends a parameter's value, so garbage that contains
# one may leave a readable prefix ("5 s" reads as t=5): the IETF forms are checked with single tokens.
IETF_GARBAGE_COUNTS = [v for v in GARBAGE_COUNTS if not any(c in v for c in " ,;")]
IETF_GARBAGE_RESETS = [v for v in GARBAGE_RESETS if not any(c in v for c in " ,;")]


@pytest.mark.parametrize("value", GARBAGE_COUNTS)
def test_garbage_remaining_count_never_throttles(value: str) -> None:
    hint = read_limits(openai(remaining_requests=value, reset_requests="30", remaining_tokens=value,
                              reset_tokens="30"))
    assert hint is not None
    assert hint.requests_remaining is None and hint.tokens_remaining is None
    assert throttle_for(hint, others_in_flight=0, tokens_needed=10**9) is None


@pytest.mark.parametrize("value", GARBAGE_RESETS)
def test_garbage_reset_never_throttles(value: str) -> None:
    hint = read_limits(openai(remaining_requests="0", reset_requests=value, remaining_tokens="0", reset_tokens=value))
    assert hint is not None
    assert hint.requests_reset_s is None and hint.tokens_reset_s is None
    assert throttle_for(hint, others_in_flight=5, tokens_needed=10**9) is None


@pytest.mark.parametrize("value", IETF_GARBAGE_COUNTS)
def test_garbage_in_the_ietf_fields_never_throttles(value: str) -> None:
    for pairs in ((("RateLimit", f'"default";r={value};t=30'),),
                  (("RateLimit", f"limit=100, remaining={value}, reset=30"),),
                  (("RateLimit-Remaining", value), ("RateLimit-Reset", "30"))):
        hint = read_limits(headers(*pairs))
        assert hint is None or throttle_for(hint, others_in_flight=0, tokens_needed=1) is None, pairs


@pytest.mark.parametrize("value", IETF_GARBAGE_RESETS)
def test_garbage_ietf_reset_never_throttles(value: str) -> None:
    for pairs in ((("RateLimit", f'"default";r=0;t={value}'),),
                  (("RateLimit", f"limit=100, remaining=0, reset={value}"),),
                  (("RateLimit-Remaining", "0"), ("RateLimit-Reset", value))):
        hint = read_limits(headers(*pairs))
        assert hint is None or throttle_for(hint, others_in_flight=0, tokens_needed=1) is None, pairs


def test_an_over_long_ietf_field_is_not_read_at_all() -> None:
    padding = ", ".join(f'"p{i}";r=1000;t=1' for i in range(400))
    field = f'"tight";r=0;t=30, {padding}'
    assert len(field) > 4096
    assert read_limits(headers(("RateLimit", field))) is None
    assert read_limits(headers(("RateLimit", "remaining=0, reset=30, " + "x=1, " * 1000))) is None


def test_an_empty_ietf_field_is_none_or_harmless() -> None:
    for value in ("", " ", ",", ";", '""', "remaining=", "reset="):
        hint = read_limits(headers(("RateLimit", value)))
        assert hint is None or throttle_for(hint, others_in_flight=0, tokens_needed=1) is None, value


# --- resets are capped like a Retry-After ---------------------------------------------------------

@pytest.mark.parametrize("value", ["999999", "86401", "100000000000000", "400h", "99999999h", "1441m", "86400.5"])
def test_openai_reset_is_capped(value: str) -> None:
    hint = read_limits(openai(remaining_requests="0", reset_requests=value, remaining_tokens="0", reset_tokens=value))
    assert hint is not None
    assert hint.requests_reset_s == MAX_RETRY_AFTER_S and hint.tokens_reset_s == MAX_RETRY_AFTER_S
    assert throttle_for(hint, others_in_flight=0, tokens_needed=1) == MAX_RETRY_AFTER_S


def test_ietf_resets_are_capped() -> None:
    for pairs in ((("RateLimit", '"default";r=0;t=999999'),), (("RateLimit", "remaining=0, reset=400h"),),
                  (("RateLimit-Remaining", "0"), ("RateLimit-Reset", "10000000"))):
        hint = read_limits(headers(*pairs))
        assert hint is not None and hint.requests_reset_s == MAX_RETRY_AFTER_S, pairs


def test_a_reset_of_exactly_the_cap_is_kept() -> None:
    hint = read_limits(openai(remaining_requests="0", reset_requests="86400", remaining_tokens="0",
                              reset_tokens="24h"))
    assert hint == LimitHint(0, MAX_RETRY_AFTER_S, 0, MAX_RETRY_AFTER_S)


# --- throttle_for -------------------------------------------------------------------------------

def test_nothing_left_waits_for_the_reset() -> None:
    assert throttle_for(LimitHint(requests_remaining=0, requests_reset_s=1.0), others_in_flight=0,
                        tokens_needed=1) == 1.0


@pytest.mark.parametrize(("remaining", "others"), [(1, 1), (2, 3), (3, 3), (0, 7)])
def test_no_more_left_than_attempts_already_in_flight_throttles(remaining: int, others: int) -> None:
    hint = LimitHint(requests_remaining=remaining, requests_reset_s=2.5)
    assert throttle_for(hint, others_in_flight=others, tokens_needed=1) == 2.5


@pytest.mark.parametrize(("remaining", "others"), [(1, 0), (2, 1), (59, 0), (4, 3)])
def test_more_left_than_in_flight_goes_on_sending(remaining: int, others: int) -> None:
    hint = LimitHint(requests_remaining=remaining, requests_reset_s=2.5)
    assert throttle_for(hint, others_in_flight=others, tokens_needed=1) is None


def test_tokens_below_one_request_wait_for_the_token_reset() -> None:
    hint = LimitHint(tokens_remaining=999, tokens_reset_s=360.0)
    assert throttle_for(hint, others_in_flight=0, tokens_needed=1000) == 360.0
    assert throttle_for(hint, others_in_flight=0, tokens_needed=999) is None


def test_tokens_are_needed_for_every_request_in_flight() -> None:
    hint = LimitHint(tokens_remaining=2500, tokens_reset_s=6.0)
    assert throttle_for(hint, others_in_flight=2, tokens_needed=1000) is None  # 2500 >= 2 x 1000
    assert throttle_for(hint, others_in_flight=3, tokens_needed=1000) == 6.0  # 2500 < 3 x 1000
    assert throttle_for(hint, others_in_flight=0, tokens_needed=2500) is None  # max(1, 0) = 1 request


def test_plenty_of_requests_but_no_tokens_throttles_on_tokens() -> None:
    hint = LimitHint(requests_remaining=59, requests_reset_s=1.0, tokens_remaining=10, tokens_reset_s=20.0)
    assert throttle_for(hint, others_in_flight=0, tokens_needed=100) == 20.0


def test_both_exhausted_wait_the_longer_reset() -> None:
    hint = LimitHint(requests_remaining=0, requests_reset_s=1.0, tokens_remaining=0, tokens_reset_s=360.0)
    assert throttle_for(hint, others_in_flight=0, tokens_needed=1) == 360.0
    hint = LimitHint(requests_remaining=0, requests_reset_s=60.0, tokens_remaining=0, tokens_reset_s=0.02)
    assert throttle_for(hint, others_in_flight=0, tokens_needed=1) == 60.0


def test_an_exhausted_window_without_a_reset_is_left_to_the_backoff() -> None:
    assert throttle_for(LimitHint(requests_remaining=0), others_in_flight=0, tokens_needed=1) is None
    assert throttle_for(LimitHint(tokens_remaining=0), others_in_flight=0, tokens_needed=1) is None
    # The other window's reset does not stand in for the missing one.
    assert throttle_for(LimitHint(requests_remaining=0, tokens_remaining=10**6, tokens_reset_s=5.0),
                        others_in_flight=0, tokens_needed=1) is None


def test_an_empty_hint_never_throttles() -> None:
    assert throttle_for(LimitHint(), others_in_flight=100, tokens_needed=10**9) is None


def test_read_then_throttle_end_to_end() -> None:
    hint = read_limits(headers(("X-RateLimit-Remaining-Requests", "0"), ("X-RateLimit-Reset-Requests", "1m30.5s"),
                               ("X-RateLimit-Remaining-Tokens", "149984"), ("X-RateLimit-Reset-Tokens", "6m0s")))
    assert hint is not None
    assert throttle_for(hint, others_in_flight=0, tokens_needed=100) == pytest.approx(90.5)
    assert throttle_for(hint, others_in_flight=0, tokens_needed=200_000) == pytest.approx(360.0)


# --- property: read_limits never raises and never returns a wait outside [0, MAX] ------------------

LIMIT_HEADERS = ["x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests",
                 "x-ratelimit-reset-tokens", "ratelimit", "ratelimit-policy", "ratelimit-remaining",
                 "ratelimit-reset", "ratelimit-limit"]
fragments = st.one_of(
    st.sampled_from(["0", "1", "-1", "1.5", "1e9", "6m0s", "1m30.5s", "20ms", "-2h", "9" * 16, "99999999h", "NaN",
                     "inf", " 3 ", "", "\u0663", "\u00b5s", "0x10", "1_000", '"default"', "r=", "t=", ";", ",", "=",
                     "limit=", "remaining=", "reset=", "1" * 70]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=20),
    st.text(max_size=20),
)
header_values = st.one_of(
    st.lists(fragments, max_size=8).map("".join),
    st.builds(lambda name, r, t: f"{name};r={r};t={t}", fragments, fragments, fragments),
    st.lists(st.builds(lambda name, r, t: f"{name};r={r};t={t}", fragments, fragments, fragments),
             max_size=4).map(", ".join),
    st.builds(lambda lim, r, t: f"limit={lim}, remaining={r}, reset={t}", fragments, fragments, fragments),
    st.text(max_size=5000),
)


def random_case(name: str, flips: list[bool]) -> str:
    return "".join(ch.upper() if flip else ch for ch, flip in zip(name, flips + [False] * len(name), strict=False))


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(LIMIT_HEADERS) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                                            min_size=1, max_size=12))
        pairs.append((random_case(name, draw(st.lists(st.booleans(), max_size=40))), draw(header_values)))
    return pairs


def check_reset(value: float | None) -> None:
    if value is not None:
        assert isinstance(value, float) and math.isfinite(value)
        assert 0.0 <= value <= MAX_RETRY_AFTER_S


def check_count(value: int | None) -> None:
    if value is not None:
        assert isinstance(value, int) and value >= 0


@FUZZ
@given(pairs=header_lists(), others=st.integers(0, 1000), tokens=st.integers(0, 10**7))
def test_read_limits_never_raises_and_every_reset_is_within_the_cap(pairs: list[tuple[str, str]], others: int,
                                                                   tokens: int) -> None:
    hint = read_limits(headers(*pairs))
    if hint is None:
        return
    assert isinstance(hint, LimitHint)
    check_reset(hint.requests_reset_s)
    check_reset(hint.tokens_reset_s)
    check_count(hint.requests_remaining)
    check_count(hint.tokens_remaining)
    wait = throttle_for(hint, others_in_flight=others, tokens_needed=tokens)
    check_reset(wait)
    # Case never matters: the same headers lowered give the same answer.
    assert read_limits(headers(*((name.lower(), value) for name, value in pairs))) == hint
