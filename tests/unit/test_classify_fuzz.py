"""Classifier fuzzing: any status, headers (repeated, any case) and body get a verdict that obeys the rules.

test_classify.py already checks that random answers yield *a* verdict. These
properties check the verdict is the right *kind* for the status whatever the
headers and body say, that it is deterministic and insensitive to header case,
and that transport failures (and only they) are classified, while unknown
exceptions propagate as the bugs they are.
"""

from __future__ import annotations

import asyncio
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from router.engine.classify import Action, Reason, Verdict, classify_error_payload, classify_exception, classify_status
from router.engine.retry_after import MAX_RETRY_AFTER_S
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
FUZZ = settings(max_examples=300, deadline=None)

RATE_HEADERS = ["Retry-After", "retry-after-ms", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
                "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens"]
header_values = st.one_of(
    st.sampled_from(["0", "1", "-1", "1.5", "1e9", "6m0s", "-2h", "1" * 400, "NaN", "inf", " 3 ", "",
                     "Wed, 21 Oct 2015 07:28:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 99 Foo 2024 xx",
                     "\u0663", "0x10", "1_000"]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
)


def random_case(name: str, flips: list[bool]) -> str:
    return "".join(ch.upper() if flip else ch.lower() for ch, flip in zip(name, flips + [False] * len(name),
                                                                          strict=False))


@st.composite
def header_lists(draw: st.DrawFn) -> list[tuple[str, str]]:
    """Header pairs as a provider could send them: any case, repeats allowed, noise mixed in."""
    pairs = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(st.sampled_from(RATE_HEADERS) | st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E),
                                                           min_size=1, max_size=12))
        pairs.append((random_case(name, draw(st.lists(st.booleans(), max_size=30))), draw(header_values)))
    return pairs


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=30),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4), max_leaves=20)
error_objects = st.fixed_dictionaries({}, optional={
    "message": json_values | st.text(min_size=400, max_size=2000), "code": json_values | st.sampled_from(
        ["insufficient_quota", "context_length_exceeded", "content_policy_violation", "rate_limit_exceeded",
         "invalid_api_key", "invalid_prefill", "content_filter"]),
    "type": json_values, "status": json_values | st.integers(100, 700), "status_code": json_values})
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda e: json.dumps({"error": e}).encode(), error_objects | json_values),
    st.integers(1, 100_000).map(lambda n: b"[" * n),  # nesting beyond the JSON parser's recursion limit
    st.integers(1, 3000).map(lambda n: b'{"error": ' * n + b"1" + b"}" * n),
    st.sampled_from([b"\xff\xfe{}", b'{"error": "\xff"}', b"NaN", b'{"choices": []}', b"{}", b'{"error": null}',
                     b'{"error": {}}', b'{"error": ""}', b'{"error": 0}', b"<html>502 Bad Gateway</html>"]),
)


def check_invariants(status: int, body: bytes, verdict: Verdict) -> None:
    assert isinstance(verdict, Verdict)
    assert isinstance(verdict.action, Action) and isinstance(verdict.reason, Reason)
    assert verdict.ok == (verdict.action is Action.SUCCESS) == (verdict.reason is Reason.OK)
    if verdict.retry_after is not None:
        assert math.isfinite(verdict.retry_after) and 0.0 <= verdict.retry_after <= MAX_RETRY_AFTER_S
    if verdict.message is not None:
        assert isinstance(verdict.message, str) and len(verdict.message) <= 500
    if verdict.throttle:
        assert verdict.action is Action.RETRY
    if verdict.action is Action.FATAL:
        assert verdict.reason in (Reason.CONTENT_POLICY, Reason.BAD_REQUEST)
        assert verdict.status is not None and 400 <= verdict.status < 500
        assert verdict.status not in (401, 402, 403, 408, 429)
    if verdict.ok:
        assert 200 <= status < 300
        parsed = json.loads(body)
        assert isinstance(parsed, dict) and not parsed.get("error")


@FUZZ
@given(status=st.integers(100, 599), pairs=header_lists(), body=bodies, continuation=st.booleans())
@pytest.mark.slow
def test_the_verdict_fits_the_status_whatever_the_headers_and_body(status: int, pairs: list[tuple[str, str]],
                                                                   body: bytes, continuation: bool) -> None:
    headers = CIMultiDictProxy(CIMultiDict(pairs))
    verdict = classify_status(status, headers, body, now_wall=NOW, continuation=continuation)
    check_invariants(status, body, verdict)

    if status in (401, 403):
        assert (verdict.action, verdict.reason, verdict.long_ejection) == (Action.FAILOVER, Reason.AUTH, True)
    elif status == 402:
        assert (verdict.action, verdict.reason) == (Action.FAILOVER, Reason.QUOTA_EXHAUSTED)
    elif status == 408 or status >= 500:
        assert (verdict.action, verdict.reason, verdict.breaker_failure) == (Action.RETRY, Reason.SERVER_ERROR, True)
    elif status == 429:
        assert verdict.reason in (Reason.RATE_LIMITED, Reason.QUOTA_EXHAUSTED)
        assert not verdict.breaker_failure  # a 429 is a pause, not a failure
    elif status < 200 or 300 <= status < 400:  # informational and redirects: never followed, never an answer
        assert (verdict.action, verdict.reason) == (Action.FAILOVER, Reason.INVALID_RESPONSE)
    elif status >= 400:
        assert verdict.action in (Action.FATAL, Action.FAILOVER)

    # The same answer classifies the same way again, and with the header names in another case.
    assert classify_status(status, headers, body, now_wall=NOW, continuation=continuation) == verdict
    if len({name.lower() for name, _ in pairs}) == len(pairs):  # no repeats: case alone must not matter
        lowered = {name.lower(): value for name, value in pairs}
        assert classify_status(status, lowered, body, now_wall=NOW, continuation=continuation) == verdict


@FUZZ
@given(payload=json_values | st.builds(lambda e: {"error": e}, error_objects), pairs=header_lists(),
       continuation=st.booleans())
@pytest.mark.slow
def test_an_error_inside_a_200_or_a_first_event_is_never_a_success(payload: object, pairs: list[tuple[str, str]],
                                                                   continuation: bool) -> None:
    verdict = classify_error_payload(payload, CIMultiDictProxy(CIMultiDict(pairs)), now_wall=NOW,
                                     continuation=continuation)
    assert isinstance(verdict, Verdict) and not verdict.ok
    check_invariants(verdict.status or 500, b"", verdict)


TRANSPORT_ERRORS = [ConnectFailed, ConnectionLost, FirstByteTimeout, FirstTokenTimeout, IdleTimeout, BodyCut,
                    InvalidResponse]


@FUZZ
@given(kind=st.sampled_from(TRANSPORT_ERRORS), detail=st.text(max_size=60), deadline_bound=st.booleans())
def test_every_transport_failure_gets_a_verdict_and_a_deadline_is_final(kind: type[TransportError], detail: str,
                                                                        deadline_bound: bool) -> None:
    verdict = classify_exception(kind(detail, deadline_bound=deadline_bound))
    assert isinstance(verdict, Verdict) and not verdict.ok
    if deadline_bound:
        assert (verdict.action, verdict.reason, verdict.status) == (Action.FATAL, Reason.DEADLINE, 504)
    else:
        assert verdict.action in (Action.RETRY, Action.FAILOVER)
        assert verdict.message == (detail or kind.__name__)


@pytest.mark.parametrize("exc", [ValueError("x"), KeyError("k"), TypeError(), RuntimeError("bug"),
                                 asyncio.CancelledError(), OSError("not translated")])
def test_anything_else_is_a_bug_and_propagates(exc: BaseException) -> None:
    with pytest.raises(type(exc)) as raised:
        classify_exception(exc)
    assert raised.value is exc
