"""The one classifier: every status, error body and transport failure becomes one Verdict
(docs/architecture.md §4.4)."""

from __future__ import annotations

import json
from email.utils import formatdate

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router.engine.classify import (
    SUCCESS,
    Action,
    Reason,
    Verdict,
    classify_error_payload,
    classify_exception,
    classify_status,
    error_fields,
)
from router.upstream.errors import (
    BodyCut,
    ConnectFailed,
    ConnectionLost,
    FirstByteTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    InvalidResponse,
    TransportError,
)

NOW = 1_700_000_000.0
OK_BODY = json.dumps({"id": "c1", "choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()


def err(message: str = "boom", *, code: str | None = None, type_: str | None = None, **extra: object) -> bytes:
    error: dict[str, object] = {"message": message, "type": type_, "code": code, **extra}
    return json.dumps({"error": error}).encode()


def status(code: int, body: bytes = b"", headers: dict[str, str] | None = None, *,
           continuation: bool = False) -> Verdict:
    return classify_status(code, headers or {}, body, now_wall=NOW, continuation=continuation)


# --- success -----------------------------------------------------------------------------------

def test_200_with_a_completion_body_is_success() -> None:
    verdict = status(200, OK_BODY)
    assert verdict is SUCCESS
    assert verdict.ok and verdict.action is Action.SUCCESS and verdict.reason is Reason.OK


def test_already_parsed_payload_is_used_instead_of_the_body() -> None:
    verdict = classify_status(200, {}, b"not json", now_wall=NOW, payload={"choices": []})
    assert verdict.ok


def test_200_with_an_empty_error_field_is_still_success() -> None:
    assert status(200, b'{"choices": [], "error": null}').ok


# --- 429 ---------------------------------------------------------------------------------------

def test_429_with_retry_after_seconds_throttles_for_that_long() -> None:
    verdict = status(429, err("slow down", code="rate_limit_exceeded"), {"Retry-After": "7"})
    assert verdict.action is Action.RETRY
    assert verdict.reason is Reason.RATE_LIMITED
    assert verdict.status == 429
    assert verdict.throttle
    assert verdict.retry_after == 7.0
    assert verdict.message == "slow down"
    assert verdict.code == "rate_limit_exceeded"


def test_429_is_not_a_breaker_failure() -> None:
    verdict = status(429, headers={"retry-after": "1"})
    assert not verdict.breaker_failure
    assert not verdict.long_ejection


def test_429_with_retry_after_http_date_is_measured_from_wall_clock() -> None:
    verdict = status(429, headers={"Retry-After": formatdate(NOW + 30, usegmt=True)})
    assert verdict.retry_after == pytest.approx(30.0)
    assert verdict.throttle


def test_429_with_retry_after_http_date_in_the_past_means_now() -> None:
    verdict = status(429, headers={"Retry-After": formatdate(NOW - 30, usegmt=True)})
    assert verdict.retry_after == 0.0


@pytest.mark.parametrize(("headers", "expected"), [
    ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
    ({"x-ratelimit-reset-tokens": "1.5s"}, 1.5),
    ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
    ({"x-ratelimit-reset-requests": "2", "x-ratelimit-reset-tokens": "9"}, 9.0),
    ({"retry-after-ms": "250"}, 0.25),
])
def test_429_reads_x_ratelimit_reset_headers(headers: dict[str, str], expected: float) -> None:
    verdict = status(429, headers=headers)
    assert verdict.throttle
    assert verdict.retry_after == pytest.approx(expected)


def test_429_with_only_the_exhausted_window_reset_uses_that_window() -> None:
    verdict = status(429, headers={
        "x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s",
        "x-ratelimit-remaining-tokens": "5000", "x-ratelimit-reset-tokens": "50s",
    })
    assert verdict.retry_after == pytest.approx(2.0)


def test_429_without_header_throttles_with_unknown_retry_after() -> None:
    verdict = status(429, err("too many requests"))
    assert verdict.action is Action.RETRY
    assert verdict.reason is Reason.RATE_LIMITED
    assert verdict.throttle
    assert verdict.retry_after is None


@pytest.mark.parametrize("garbage", ["soon", "-5", "nan", "inf", "1e3", "", "\u0663"])
def test_429_with_garbage_retry_after_is_unknown_not_zero(garbage: str) -> None:
    assert status(429, headers={"Retry-After": garbage}).retry_after is None


@pytest.mark.parametrize("code", ["insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"])
def test_429_insufficient_quota_fails_over_with_long_ejection(code: str) -> None:
    verdict = status(429, err("You exceeded your current quota", code=code), {"Retry-After": "1"})
    assert verdict.action is Action.FAILOVER
    assert verdict.reason is Reason.QUOTA_EXHAUSTED
    assert verdict.long_ejection
    assert not verdict.throttle


def test_429_quota_type_without_code_is_also_quota() -> None:
    verdict = status(429, err("quota", type_="insufficient_quota"))
    assert verdict.reason is Reason.QUOTA_EXHAUSTED


# --- 5xx ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("code", [500, 502, 503, 504])
def test_server_errors_retry_and_count_towards_the_breaker(code: int) -> None:
    verdict = status(code, err("internal"))
    assert verdict.action is Action.RETRY
    assert verdict.reason is Reason.SERVER_ERROR
    assert verdict.status == code
    assert verdict.breaker_failure
    assert not verdict.throttle
    assert verdict.retry_after is None


def test_server_error_with_html_body_still_classifies() -> None:
    verdict = status(502, b"<html><body>Bad Gateway</body></html>")
    assert verdict.reason is Reason.SERVER_ERROR
    assert verdict.message is None


def test_503_with_retry_after_throttles_and_still_counts_as_failure() -> None:
    verdict = status(503, b"", {"Retry-After": "12"})
    assert verdict.action is Action.RETRY
    assert verdict.throttle
    assert verdict.retry_after == 12.0
    assert verdict.breaker_failure


def test_408_request_timeout_is_retried_like_a_server_error() -> None:
    assert status(408).reason is Reason.SERVER_ERROR


# --- auth / billing ----------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"), [
    (401, Reason.AUTH), (403, Reason.AUTH), (402, Reason.QUOTA_EXHAUSTED),
])
def test_bad_key_or_billing_fails_over_with_long_ejection(code: int, reason: Reason) -> None:
    verdict = status(code, err("Incorrect API key provided", code="invalid_api_key"))
    assert verdict.action is Action.FAILOVER
    assert verdict.reason is reason
    assert verdict.long_ejection
    assert verdict.status == code


# --- 4xx request errors ------------------------------------------------------------------------

def test_400_context_length_code_fails_over_excluding_the_model() -> None:
    verdict = status(400, err("too long", code="context_length_exceeded", type_="invalid_request_error"))
    assert verdict.action is Action.FAILOVER
    assert verdict.reason is Reason.CONTEXT_LENGTH
    assert verdict.exclude_model
    assert not verdict.breaker_failure


@pytest.mark.parametrize("message", [
    "This model's maximum context length is 8192 tokens. However, you requested 9000 tokens.",
    "Input exceeds the context window of this model",
    "Too many tokens in prompt",
])
def test_400_context_length_message_without_code_is_recognised(message: str) -> None:
    verdict = status(400, err(message, type_="invalid_request_error"))
    assert verdict.reason is Reason.CONTEXT_LENGTH
    assert verdict.exclude_model


def test_413_payload_too_large_is_a_context_length_failover() -> None:
    assert status(413).reason is Reason.CONTEXT_LENGTH


def test_content_policy_violation_is_fatal_with_the_providers_message() -> None:
    message = "Your request was rejected as a result of our safety system."
    verdict = status(400, err(message, code="content_policy_violation", type_="invalid_request_error"))
    assert verdict.action is Action.FATAL
    assert verdict.reason is Reason.CONTENT_POLICY
    assert verdict.message == message
    assert verdict.status == 400
    assert verdict.code == "content_policy_violation"


@pytest.mark.parametrize("code", [400, 404, 422])
def test_other_request_errors_are_fatal(code: int) -> None:
    verdict = status(code, err("unknown parameter: foo", type_="invalid_request_error"))
    assert verdict.action is Action.FATAL
    assert verdict.reason is Reason.BAD_REQUEST
    assert verdict.status == code
    assert verdict.message == "unknown parameter: foo"
    assert not verdict.breaker_failure


def test_error_message_is_truncated() -> None:
    verdict = status(400, err("x" * 5000))
    assert verdict.message is not None
    assert len(verdict.message) == 500


def test_error_given_as_plain_string_is_the_message() -> None:
    assert status(400, b'{"error": "bad things"}').message == "bad things"


@pytest.mark.parametrize("code", [400, 422])
def test_continuation_rejected_with_400_is_prefill_rejected(code: int) -> None:
    verdict = status(code, err("invalid request"), continuation=True)
    assert verdict.action is Action.FAILOVER
    assert verdict.reason is Reason.PREFILL_REJECTED


def test_continuation_rejected_with_prefill_message_on_404_is_prefill_rejected() -> None:
    verdict = status(404, err("assistant message prefill is not supported"), continuation=True)
    assert verdict.reason is Reason.PREFILL_REJECTED


def test_content_policy_on_a_continuation_is_still_fatal() -> None:
    verdict = status(400, err("no", code="content_policy_violation"), continuation=True)
    assert verdict.action is Action.FATAL
    assert verdict.reason is Reason.CONTENT_POLICY


def test_server_error_on_a_continuation_is_still_a_server_error() -> None:
    assert status(500, continuation=True).reason is Reason.SERVER_ERROR


# --- 2xx that is not an answer -----------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"<html>oops</html>", b"[1, 2]", b'"text"', b"\xff\xfe\x00"])
def test_2xx_without_a_json_object_body_is_an_invalid_response(body: bytes) -> None:
    verdict = status(200, body)
    assert verdict.action is Action.RETRY
    assert verdict.reason is Reason.INVALID_RESPONSE
    assert verdict.breaker_failure


@pytest.mark.parametrize(("error", "reason", "action"), [
    ({"message": "slow down", "code": "rate_limit_exceeded"}, Reason.RATE_LIMITED, Action.RETRY),
    ({"message": "quota", "code": "insufficient_quota"}, Reason.QUOTA_EXHAUSTED, Action.FAILOVER),
    ({"message": "too long", "code": "context_length_exceeded"}, Reason.CONTEXT_LENGTH, Action.FAILOVER),
    ({"message": "unsafe", "code": "content_policy_violation"}, Reason.CONTENT_POLICY, Action.FATAL),
    ({"message": "bad", "type": "invalid_request_error"}, Reason.BAD_REQUEST, Action.FATAL),
    ({"message": "nope", "code": "invalid_api_key"}, Reason.AUTH, Action.FAILOVER),
    ({"message": "upstream exploded"}, Reason.SERVER_ERROR, Action.RETRY),
    ({"message": "busy", "status": 503}, Reason.SERVER_ERROR, Action.RETRY),
    ({"message": "too many", "code": 429}, Reason.RATE_LIMITED, Action.RETRY),
    ({"message": "forbidden", "status_code": 403}, Reason.AUTH, Action.FAILOVER),
])
def test_200_whose_body_is_an_error_is_classified_like_the_matching_status(
        error: dict[str, object], reason: Reason, action: Action) -> None:
    verdict = status(200, json.dumps({"error": error}).encode())
    assert verdict.reason is reason
    assert verdict.action is action


def test_200_error_body_honours_retry_after_header() -> None:
    verdict = status(200, err("slow down", code="rate_limit_exceeded"), {"Retry-After": "4"})
    assert verdict.retry_after == 4.0
    assert verdict.status == 429


def test_boolean_status_field_is_not_a_status() -> None:
    verdict = classify_error_payload({"error": {"message": "x", "status": True}}, {}, now_wall=NOW)
    assert verdict.reason is Reason.SERVER_ERROR
    assert verdict.status == 500


def test_first_sse_event_error_is_classified_by_the_payload() -> None:
    verdict = classify_error_payload({"error": {"message": "overloaded", "code": "rate_limited"}},
                                     {"retry-after": "2"}, now_wall=NOW)
    assert verdict.reason is Reason.RATE_LIMITED
    assert verdict.retry_after == 2.0


def test_prefill_rejection_in_a_continuations_first_event() -> None:
    verdict = classify_error_payload({"error": {"message": "prefix not allowed", "type": "invalid_request_error"}},
                                     {}, now_wall=NOW, continuation=True)
    assert verdict.reason is Reason.PREFILL_REJECTED


@pytest.mark.parametrize("payload", [None, [], "error", {"error": 5}, {"error": []}, {"nope": 1}])
def test_error_fields_tolerate_odd_shapes(payload: object) -> None:
    code, kind, message = error_fields(payload)
    assert code is None and kind is None
    assert message is None


# --- other statuses ----------------------------------------------------------------------------

@pytest.mark.parametrize("code", [301, 302, 303, 307, 308, 304, 100, 199])
def test_redirects_and_informational_fail_over_as_invalid_responses(code: int) -> None:
    verdict = status(code, b"", {"Location": "https://elsewhere.example/"})
    assert verdict.action is Action.FAILOVER
    assert verdict.reason is Reason.INVALID_RESPONSE
    assert verdict.breaker_failure
    assert verdict.message == f"unexpected status {code} from provider"


# --- transport failures ------------------------------------------------------------------------

@pytest.mark.parametrize(("exc", "action", "reason", "breaker_failure"), [
    (ConnectFailed("refused"), Action.RETRY, Reason.CONNECT_ERROR, True),
    (ConnectionLost("reset"), Action.RETRY, Reason.CONNECTION_LOST, True),
    (FirstByteTimeout("silent"), Action.FAILOVER, Reason.FIRST_BYTE_TIMEOUT, True),
    (FirstTokenTimeout("slow"), Action.FAILOVER, Reason.TTFT_TIMEOUT, False),
    (IdleTimeout("stall"), Action.FAILOVER, Reason.STREAM_STALL, True),
    (BodyCut("cut"), Action.RETRY, Reason.STREAM_CUT, True),
    (InvalidResponse("garbage"), Action.RETRY, Reason.INVALID_RESPONSE, True),
])
def test_transport_errors_map_to_verdicts(exc: TransportError, action: Action, reason: Reason,
                                          breaker_failure: bool) -> None:
    verdict = classify_exception(exc)
    assert verdict.action is action
    assert verdict.reason is reason
    assert verdict.breaker_failure is breaker_failure
    assert verdict.message == str(exc)
    assert verdict.status is None


@pytest.mark.parametrize("cls", [ConnectFailed, ConnectionLost, FirstByteTimeout, FirstTokenTimeout,
                                 IdleTimeout, BodyCut, InvalidResponse])
def test_a_timeout_caused_by_the_deadline_is_fatal_deadline(cls: type[TransportError]) -> None:
    verdict = classify_exception(cls("x", deadline_bound=True))
    assert verdict.action is Action.FATAL
    assert verdict.reason is Reason.DEADLINE
    assert verdict.status == 504
    assert not verdict.breaker_failure  # the provider was not at fault


def test_unknown_exceptions_propagate() -> None:
    with pytest.raises(KeyError):
        classify_exception(KeyError("bug"))


# --- robustness --------------------------------------------------------------------------------

@pytest.mark.parametrize(("code", "reason"), [(200, Reason.INVALID_RESPONSE), (500, Reason.SERVER_ERROR)])
def test_deeply_nested_body_is_classified_not_a_crash(code: int, reason: Reason) -> None:
    verdict = status(code, b"[" * 100_000)
    assert verdict.reason is reason


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=20,
)
error_objects = st.fixed_dictionaries({}, optional={
    "message": json_values, "code": json_values, "type": json_values, "status": json_values,
    "status_code": json_values,
})
bodies = st.one_of(
    st.binary(max_size=200),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda e: json.dumps({"error": e}).encode(), error_objects | json_values),
)
header_values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["1", "0", "-1", "1.5", "1e9", "6m0s", "Wed, 21 Oct 2015 07:28:00 GMT", "99999999999",
                     "Mon, 01 Jan 10000 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 +1400", "1h1m1s1ms1us1ns"]),
)
header_names = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["Retry-After", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
                     "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"]),
)


@settings(max_examples=400, deadline=None)
@given(code=st.integers(min_value=100, max_value=599),
       headers=st.dictionaries(header_names, header_values, max_size=6),
       body=bodies, continuation=st.booleans())
@pytest.mark.slow
def test_any_answer_yields_a_verdict(code: int, headers: dict[str, str], body: bytes,
                                     continuation: bool) -> None:
    verdict = classify_status(code, headers, body, now_wall=NOW, continuation=continuation)
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.action, Action) and isinstance(verdict.reason, Reason)
    if verdict.retry_after is not None:
        assert 0.0 <= verdict.retry_after <= 86_400.0
    if verdict.throttle:
        assert verdict.action is Action.RETRY
    if verdict.ok:
        assert 200 <= code < 300


@settings(max_examples=200, deadline=None)
@given(payload=json_values | st.builds(lambda e: {"error": e}, error_objects),
       headers=st.dictionaries(header_names, header_values, max_size=4))
def test_any_error_payload_yields_a_failure_verdict(payload: object, headers: dict[str, str]) -> None:
    verdict = classify_error_payload(payload, headers, now_wall=NOW)
    assert isinstance(verdict, Verdict)
    assert not verdict.ok


def test_server_error_ignores_rate_limit_reset_headers_that_ride_along() -> None:
    # OpenAI sends x-ratelimit-reset-* on every answer; a 500 must not throttle for minutes.
    headers = {"x-ratelimit-reset-tokens": "6m0s", "x-ratelimit-reset-requests": "1s"}
    verdict = classify_status(500, headers, b"", now_wall=0.0)
    assert verdict.retry_after is None
    assert not verdict.throttle


def test_rate_limit_reset_header_counts_on_a_429() -> None:
    verdict = classify_status(429, {"x-ratelimit-reset-requests": "1.5s"}, b"", now_wall=0.0)
    assert verdict.retry_after == 1.5
