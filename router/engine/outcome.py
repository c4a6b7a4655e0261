"""How a request ended, decided once: the request record and the closed set of outcome labels.

A `RequestRecord` is made when a request is received (by the daemon, before it even reads
the body) or when the library is called. `admit()` names its route and client once the
router resolved them; `finish(outcome)` decides how it ended. The first `finish` wins and
later ones are ignored, so a stream whose `[DONE]` was handed over stays a success even if
its client goes away a moment later. The observer's `request_started` /
`request_finished` pair and the daemon's access line both read the record, so the
metrics and the log cannot disagree about a request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from router.clock import Clock
from router.errors import NoTargetAvailable, RateLimited, RouterError, UpstreamError
from router.observe.observer import UNKNOWN_ROUTE, Observer

if TYPE_CHECKING:
    from router.observe.tracing import RequestSpan

SUCCESS = "success"
CANCELLED = "cancelled"
INTERNAL_ERROR = "internal_error"


class RequestRecord:
    """One client request from reception to its outcome (see the module docstring)."""

    __slots__ = ("_admitted", "_clock", "_observer", "attempts", "client", "completion_tokens", "ended", "outcome",
                 "prompt_tokens", "provider", "route", "span", "started", "traceparent")

    def __init__(self, observer: Observer, clock: Clock, *, client: str = "-") -> None:
        self._observer = observer
        self._clock = clock
        self._admitted = False
        self.started = clock.monotonic()
        self.ended: float | None = None
        self.route = UNKNOWN_ROUTE  # a policy route name once admitted, never the client's raw `model`
        self.client = client  # a policy client name, or "-"
        self.outcome: str | None = None
        self.attempts = 0  # upstream attempts sent so far
        self.provider: str | None = None  # who answered (or, for a failure, the last provider that failed)
        self.prompt_tokens: int | None = None  # the provider's reported usage, when it reported one
        self.completion_tokens: int | None = None
        self.span: RequestSpan | None = None  # with tracing on (observe/tracing.py)
        self.traceparent: str | None = None  # the client's, when a server read one

    def admit(self, route: str, client: str) -> None:
        """The router resolved the route and the client: the request counts as in flight on them."""
        if self._admitted or self.outcome is not None:
            return
        self._admitted = True
        self.route, self.client = route, client
        self._observer.request_started(route, client)

    def finish(self, outcome: str) -> bool:
        """Decide the outcome; True if this call decided it, False if it was already decided."""
        if self.outcome is not None:
            return False
        self.outcome = outcome
        self.ended = self._clock.monotonic()
        if not self._admitted:  # refused before admission: counted under the route it resolved to, if any
            self._observer.request_started(self.route, self.client)
        self._observer.request_finished(self.route, self.client, outcome, self.ended - self.started)
        if self.span is not None:
            self.span.finish(outcome, provider=self.provider, attempts=self.attempts)
        return True

    def fail(self, exc: BaseException) -> bool:
        """Finish with the outcome `exc` stands for, noting the provider and attempts it names."""
        if self.outcome is not None:
            return False
        if isinstance(exc, RouterError):  # the provider the error names, if any (not just the last one tried)
            provider = getattr(exc, "provider", None)
            self.provider = provider if isinstance(provider, str) else None
        return self.finish(outcome_of(exc))


def outcome_of(exc: BaseException) -> str:
    """The closed-set outcome label of a request that ended with `exc`."""
    if isinstance(exc, asyncio.CancelledError):
        return CANCELLED
    if isinstance(exc, RateLimited):
        return "rate_limited" if exc.scope == "client" else "providers_rate_limited"
    if isinstance(exc, NoTargetAvailable):
        return "no_target"
    if isinstance(exc, UpstreamError):
        return exc.reason
    if isinstance(exc, RouterError):
        return exc.code or exc.error_type
    return INTERNAL_ERROR


def usage_counts(usage: object) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of an OpenAI `usage` block; None for what is absent or not a count."""
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt_ok = isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0
    completion_ok = isinstance(completion, int) and not isinstance(completion, bool) and completion >= 0
    return (prompt if prompt_ok else None), (completion if completion_ok else None)
