"""The one classifier: every provider answer and transport failure becomes a Verdict here.

Retry, failover, breaker, throttling, limiter reconciliation and metrics all
consume the verdict, so they can never disagree about what happened.
Pure functions: no I/O, no clock reads (the caller passes `now_wall`).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from router import jsonio
from router.engine.retry_after import retry_after_seconds
from router.upstream.errors import (
    BodyCut,
    ConnectFailed,
    ConnectionLost,
    FirstByteTimeout,
    FirstTokenTimeout,
    IdleTimeout,
    InvalidResponse,
    ResponseTooLarge,
    TransportError,
)


class Action(enum.Enum):
    SUCCESS = "success"
    RETRY = "retry"  # the same target may be tried again (after backoff or its Retry-After)
    FAILOVER = "failover"  # another target only
    FATAL = "fatal"  # stop and tell the caller


class Reason(enum.StrEnum):
    """Closed set of outcome labels (also used as metric label values)."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXHAUSTED = "quota_exhausted"
    SERVER_ERROR = "server_error"
    CONNECT_ERROR = "connect_error"
    CONNECTION_LOST = "connection_lost"
    FIRST_BYTE_TIMEOUT = "first_byte_timeout"
    TTFT_TIMEOUT = "ttft_timeout"
    STREAM_STALL = "stream_stall"
    STREAM_CUT = "stream_cut"
    INVALID_RESPONSE = "invalid_response"
    CONTEXT_LENGTH = "context_length_exceeded"
    CONTENT_POLICY = "content_policy_violation"
    BAD_REQUEST = "bad_request"
    AUTH = "auth_error"
    PREFILL_REJECTED = "prefill_rejected"
    DEADLINE = "deadline_exceeded"


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    reason: Reason
    status: int | None = None
    retry_after: float | None = None  # seconds, from the provider's headers; None = unknown
    breaker_failure: bool = False  # counts towards opening the target's breaker
    throttle: bool = False  # the provider asked us to slow down: no attempt before retry_after
    long_ejection: bool = False  # our key or account is bad there: eject for the maximum time
    exclude_model: bool = False  # this upstream model cannot take the request (context length)
    message: str | None = None  # the provider's own error message, for pass-through
    code: str | None = None  # the provider's error code, if any

    @property
    def ok(self) -> bool:
        return self.action is Action.SUCCESS


SUCCESS = Verdict(Action.SUCCESS, Reason.OK, status=200)

_CONTEXT_CODES = frozenset({"context_length_exceeded", "string_above_max_length", "context_too_long"})
_CONTEXT_PHRASES = ("context length", "context_length", "maximum context", "context window", "too many tokens")
_POLICY_CODES = frozenset({"content_policy_violation", "content_filter", "content_policy"})
_QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "quota_exceeded"})
_PREFILL_PHRASES = ("prefill", "prefix", "assistant message")
_RATE_CODES = frozenset({"rate_limit_exceeded", "rate_limited", "too_many_requests"})


def error_fields(payload: object) -> tuple[str | None, str | None, str | None]:
    """(code, type, message) of an OpenAI-style error object, tolerating odd shapes."""
    if not isinstance(payload, Mapping):
        return None, None, None
    err = payload.get("error")
    if isinstance(err, str):
        return None, None, err[:500]
    if not isinstance(err, Mapping):
        return None, None, None
    code, kind, message = err.get("code"), err.get("type"), err.get("message")
    return (
        str(code) if code is not None else None,
        str(kind) if kind is not None else None,
        str(message)[:500] if message is not None else None,
    )


def _parse_json(body: bytes) -> object:
    try:
        return jsonio.loads(body) if body else None
    except (ValueError, RecursionError):  # absurdly nested JSON is garbage, not a crash
        return None


def classify_status(status: int, headers: Mapping[str, str], body: bytes, *, now_wall: float,
                    continuation: bool = False, payload: object = None) -> Verdict:
    """Classify a complete non-streaming answer (or the error answer of a stream request).

    `payload` may carry the already-parsed body to avoid parsing it twice.
    `continuation` marks a request that carried an assistant prefill: a 4xx then
    means the target refused the prefill, not that the client's request was bad.
    """
    if 200 <= status < 300:
        parsed = payload if payload is not None else _parse_json(body)
        if not isinstance(parsed, dict):  # decoded JSON: an object is a dict (and `dict` is cheaper than an ABC)
            return Verdict(Action.RETRY, Reason.INVALID_RESPONSE, status=status, breaker_failure=True,
                           message="provider answered 2xx with a body that is not a JSON object")
        if "error" in parsed and parsed.get("error"):
            return classify_error_payload(parsed, headers, now_wall=now_wall, continuation=continuation)
        return SUCCESS
    parsed = payload if payload is not None else _parse_json(body)
    code, kind, message = error_fields(parsed)
    return _classify_error(status, code, kind, message, headers, now_wall=now_wall, continuation=continuation)


def classify_error_payload(payload: object, headers: Mapping[str, str], *, now_wall: float,
                           continuation: bool = False) -> Verdict:
    """A 200 (or a stream's first event) that carries an error: classify like the matching status."""
    code, kind, message = error_fields(payload)
    status = _status_hint(payload, code, kind)
    return _classify_error(status, code, kind, message, headers, now_wall=now_wall, continuation=continuation)


def _status_hint(payload: object, code: str | None, kind: str | None) -> int:
    err = payload.get("error") if isinstance(payload, Mapping) else None
    if isinstance(err, Mapping):
        for key in ("status", "status_code", "code"):
            value = err.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 400 <= value <= 599:
                return value
    labels = {code or "", kind or ""}
    if labels & _RATE_CODES or labels & _QUOTA_CODES:
        return 429
    if labels & _CONTEXT_CODES or labels & _POLICY_CODES or "invalid_request_error" in labels:
        return 400
    if labels & {"invalid_api_key", "authentication_error"}:
        return 401
    return 500


def _classify_error(status: int, code: str | None, kind: str | None, message: str | None,
                    headers: Mapping[str, str], *, now_wall: float, continuation: bool) -> Verdict:
    labels = {code or "", kind or ""}
    lowered = (message or "").lower()
    if status == 429:
        if labels & _QUOTA_CODES:
            return Verdict(Action.FAILOVER, Reason.QUOTA_EXHAUSTED, status=status, long_ejection=True,
                           message=message, code=code)
        return Verdict(Action.RETRY, Reason.RATE_LIMITED, status=status, throttle=True,
                       retry_after=retry_after_seconds(headers, now_wall), message=message, code=code)
    if status in (401, 403, 402):
        reason = Reason.QUOTA_EXHAUSTED if status == 402 else Reason.AUTH
        return Verdict(Action.FAILOVER, reason, status=status, long_ejection=True, message=message, code=code)
    if status == 408 or status >= 500:
        # Only an explicit Retry-After: x-ratelimit-reset-* ride along on every answer.
        retry_after = retry_after_seconds(headers, now_wall, rate_limit_resets=False)
        # A 503 with Retry-After is the provider asking for a pause: honour it like a 429,
        # but it still counts as a failure because the provider could not serve.
        return Verdict(Action.RETRY, Reason.SERVER_ERROR, status=status, breaker_failure=True,
                       retry_after=retry_after, throttle=retry_after is not None, message=message, code=code)
    if 400 <= status < 500:
        if labels & _POLICY_CODES:
            return Verdict(Action.FATAL, Reason.CONTENT_POLICY, status=status, message=message, code=code)
        if continuation and (code == "invalid_prefill" or any(p in lowered for p in _PREFILL_PHRASES)
                             or status in (400, 422)):
            return Verdict(Action.FAILOVER, Reason.PREFILL_REJECTED, status=status, message=message, code=code)
        if status == 413 or labels & _CONTEXT_CODES or any(p in lowered for p in _CONTEXT_PHRASES):
            return Verdict(Action.FAILOVER, Reason.CONTEXT_LENGTH, status=status, exclude_model=True,
                           message=message, code=code)
        return Verdict(Action.FATAL, Reason.BAD_REQUEST, status=status, message=message, code=code)
    # 1xx/3xx: redirects are never followed (they could carry our credentials elsewhere).
    return Verdict(Action.FAILOVER, Reason.INVALID_RESPONSE, status=status, breaker_failure=True,
                   message=f"unexpected status {status} from provider")


def classify_exception(exc: BaseException) -> Verdict:
    """Map a transport failure to a verdict. Unknown exceptions are bugs: let them propagate."""
    if isinstance(exc, TransportError) and exc.deadline_bound:
        return Verdict(Action.FATAL, Reason.DEADLINE, status=504, message="request deadline exceeded")
    if isinstance(exc, ConnectFailed):
        return Verdict(Action.RETRY, Reason.CONNECT_ERROR, breaker_failure=True, message=str(exc))
    if isinstance(exc, ConnectionLost):
        return Verdict(Action.RETRY, Reason.CONNECTION_LOST, breaker_failure=True, message=str(exc))
    if isinstance(exc, FirstByteTimeout):
        # A silent provider is not retried: it would cost another full first-byte timeout.
        return Verdict(Action.FAILOVER, Reason.FIRST_BYTE_TIMEOUT, breaker_failure=True, message=str(exc))
    if isinstance(exc, FirstTokenTimeout):
        return Verdict(Action.FAILOVER, Reason.TTFT_TIMEOUT, message=str(exc))
    if isinstance(exc, IdleTimeout):
        return Verdict(Action.FAILOVER, Reason.STREAM_STALL, breaker_failure=True, message=str(exc))
    if isinstance(exc, BodyCut):
        return Verdict(Action.RETRY, Reason.STREAM_CUT, breaker_failure=True, message=str(exc))
    if isinstance(exc, ResponseTooLarge):
        return Verdict(Action.FAILOVER, Reason.INVALID_RESPONSE, breaker_failure=True, message=str(exc))
    if isinstance(exc, InvalidResponse):
        return Verdict(Action.RETRY, Reason.INVALID_RESPONSE, breaker_failure=True, message=str(exc))
    raise exc
