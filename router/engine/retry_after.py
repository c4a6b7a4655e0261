"""How long a provider asked us to wait, read from its response headers.

Garbage never becomes 0: an unparseable, negative or non-finite value is ignored so
the caller falls back to its backoff delay instead of retrying at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from datetime import UTC
from email.utils import parsedate_to_datetime

__all__ = ["MAX_RETRY_AFTER_S", "parse_go_duration", "retry_after_seconds"]

# A day: beyond that a header is more likely broken than meaningful.
MAX_RETRY_AFTER_S = 86_400.0

# ASCII digits only: \d and float() would also accept other scripts' digits and "1_0".
_DECIMAL = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_GO_DURATION = re.compile(r"(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:ns|us|\u00b5s|\u03bcs|ms|s|m|h))+")
_GO_COMPONENT = re.compile(r"([0-9]+\.?[0-9]*|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_GO_UNIT_S = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
              "m": 60.0, "h": 3600.0}

_WANTED = frozenset({
    "retry-after-ms", "retry-after",
    "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
    "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
})


def retry_after_seconds(headers: Mapping[str, str], now_wall: float, *,
                        rate_limit_resets: bool = True) -> float | None:
    """Seconds to wait before the next request to this provider, or None if it did not say.

    ``now_wall`` is the wall-clock time (``time.time()``) an HTTP-date is measured from.
    ``rate_limit_resets=False`` ignores ``x-ratelimit-reset-*``: OpenAI-style providers send
    them on every answer, so only a 429 makes them mean "wait".
    """
    found: dict[str, str] = {}
    for key, value in headers.items():
        name = key.lower()
        if name in _WANTED and name not in found:  # the first of repeated headers wins
            found[name] = value.strip()
    if not found:
        return None

    if (ms := _decimal(found.get("retry-after-ms"))) is not None:
        return _capped(ms / 1000.0)
    if (header := found.get("retry-after")) is not None:
        if (seconds := _decimal(header)) is not None:
            return _capped(seconds)
        if (at := _http_date(header)) is not None:
            return _capped(max(0.0, at - now_wall))
    if not rate_limit_resets:
        return None

    reset_requests = _reset(found.get("x-ratelimit-reset-requests"))
    reset_tokens = _reset(found.get("x-ratelimit-reset-tokens"))
    requests_exhausted = _decimal(found.get("x-ratelimit-remaining-requests")) == 0.0
    tokens_exhausted = _decimal(found.get("x-ratelimit-remaining-tokens")) == 0.0
    if requests_exhausted != tokens_exhausted:
        # The other window's reset says nothing about when the exhausted one refills.
        wait = reset_requests if requests_exhausted else reset_tokens
    else:
        wait = max((v for v in (reset_requests, reset_tokens) if v is not None), default=None)
    return None if wait is None else _capped(wait)


def parse_go_duration(text: str) -> float | None:
    """Seconds in a Go ``time.Duration`` string ("6m0s", "20ms", "-1.5h"), None if it is not one."""
    text = text.strip()
    sign = 1.0
    if text[:1] in ("+", "-"):
        sign = -1.0 if text[0] == "-" else 1.0
        text = text[1:]
    if text == "0":
        return 0.0
    if not _GO_DURATION.fullmatch(text):
        return None
    total = math.fsum(float(number) * _GO_UNIT_S[unit] for number, unit in _GO_COMPONENT.findall(text))
    return sign * total if math.isfinite(total) else None


def _decimal(text: str | None) -> float | None:
    if text is None or not _DECIMAL.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def _reset(text: str | None) -> float | None:
    if text is None:
        return None
    seconds = _decimal(text)
    if seconds is None:
        seconds = parse_go_duration(text)
    return seconds if seconds is not None and seconds >= 0.0 else None


def _http_date(text: str) -> float | None:
    try:
        moment = parsedate_to_datetime(text)
    except (ValueError, TypeError, IndexError, OverflowError):
        return None
    if moment.tzinfo is None:  # asctime and "-0000" carry no zone; HTTP dates are GMT
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.timestamp()
    except (OverflowError, ValueError):
        return None


def _capped(seconds: float) -> float:
    return min(seconds, MAX_RETRY_AFTER_S)
