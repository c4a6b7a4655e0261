"""What a provider says about its remaining rate limit, on every answer, and when that means "stop now".

Read on every reply, successes included, so the router stops sending *before* the 429:

- OpenAI's `x-ratelimit-remaining-requests` / `-tokens` with `x-ratelimit-reset-requests` /
  `-tokens` (seconds, or Go durations such as `1s`, `6m0s`, `20ms`);
- the IETF fields (draft-ietf-httpapi-ratelimit-headers): the current structured form
  `RateLimit: "default";r=0;t=30` (with `RateLimit-Policy: "default";q=100;w=60`), the earlier
  `RateLimit: limit=100, remaining=0, reset=30`, and the earliest `RateLimit-Remaining` /
  `RateLimit-Reset` pair.

Pure functions; a value that does not parse is ignored (it never throttles), and a reset is capped
like a Retry-After (engine/retry_after.py).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from router.engine.retry_after import MAX_RETRY_AFTER_S, parse_go_duration

_INTEGER = re.compile(r"[0-9]{1,15}")
_DECIMAL = re.compile(r"[0-9]{1,15}(?:\.[0-9]{1,9})?")
# One member of a structured RateLimit list: a token or string name, then ;key=value parameters.
_PARAMETER = re.compile(r";\s*([a-z][a-z0-9_.*-]*)\s*=\s*([^;,\s]+)")
_MAX_FIELD = 4096  # a longer field is not read at all: nobody's limit needs more


@dataclass(frozen=True, slots=True)
class LimitHint:
    """What one answer said; None where it said nothing."""

    requests_remaining: int | None = None
    requests_reset_s: float | None = None
    tokens_remaining: int | None = None
    tokens_reset_s: float | None = None


def read_limits(headers: Mapping[str, str]) -> LimitHint | None:
    """The limit state announced in `headers` (a case-insensitive mapping), None if there is none."""
    get = headers.get
    remaining_requests = get("x-ratelimit-remaining-requests")
    remaining_tokens = get("x-ratelimit-remaining-tokens")
    if remaining_requests is not None or remaining_tokens is not None:
        return LimitHint(requests_remaining=_count(remaining_requests),
                         requests_reset_s=_reset(get("x-ratelimit-reset-requests")),
                         tokens_remaining=_count(remaining_tokens),
                         tokens_reset_s=_reset(get("x-ratelimit-reset-tokens")))
    combined = get("ratelimit")
    if combined is not None:
        return _ietf(combined)
    remaining = get("ratelimit-remaining")
    if remaining is not None:
        return LimitHint(requests_remaining=_count(remaining), requests_reset_s=_reset(get("ratelimit-reset")))
    return None


def throttle_for(hint: LimitHint, *, others_in_flight: int, tokens_needed: int) -> float | None:
    """Seconds to hold off this provider, or None to go on sending.

    Requests: nothing left, or no more left than the attempts already on their way (each will take
    one). Tokens: less left than another request like this one (times those in flight) would need.
    A window without a reset time cannot be waited out precisely: the caller's backoff applies then.
    """
    waits: list[float] = []
    if hint.requests_remaining is not None and hint.requests_remaining <= others_in_flight \
            and hint.requests_reset_s is not None:
        waits.append(hint.requests_reset_s)
    if hint.tokens_remaining is not None and hint.tokens_reset_s is not None \
            and hint.tokens_remaining < tokens_needed * max(1, others_in_flight):
        waits.append(hint.tokens_reset_s)
    return max(waits) if waits else None


def _ietf(value: str) -> LimitHint | None:
    if len(value) > _MAX_FIELD:
        return None
    value = value.strip()
    if value.lower().startswith(("limit=", "remaining=", "reset=")):  # draft -03 to -06: one item
        params = dict(part.strip().split("=", 1) for part in value.split(",") if "=" in part)
        return LimitHint(requests_remaining=_count(params.get("remaining")),
                         requests_reset_s=_reset(params.get("reset")))
    # Draft -07 on: a list of `"policy";r=..;t=..`; the tightest policy decides.
    tightest: tuple[int, float | None] | None = None
    for member in value.split(","):
        params = dict(_PARAMETER.findall(member))
        remaining = _count(params.get("r"))
        if remaining is None:
            continue
        reset = _reset(params.get("t"))
        if tightest is None or (remaining, -(reset or 0.0)) < (tightest[0], -(tightest[1] or 0.0)):
            tightest = (remaining, reset)
    if tightest is None:
        return None
    return LimitHint(requests_remaining=tightest[0], requests_reset_s=tightest[1])


def _count(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    return int(text) if _INTEGER.fullmatch(text) else None


def _reset(text: str | None) -> float | None:
    if text is None:
        return None
    text = text.strip()
    if len(text) > 64:
        return None
    seconds = float(text) if _DECIMAL.fullmatch(text) else parse_go_duration(text)
    if seconds is None or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER_S)
