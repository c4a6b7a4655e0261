"""The engine's observation seam: what happened, reported to an injected sink.

The engine calls these hooks and knows nothing about Prometheus; the metrics
exporter (`router.observe.prometheus.PrometheusObserver`) and tests implement `Observer`.
Labels passed here come from a closed set: route and provider names from the
policy, client names of the policy (or `-`), `Reason` values and the outcomes of
`engine.outcome_of`. A request refused before a route was resolved (unknown
model, unreadable body, bad key) is reported under the route `UNKNOWN_ROUTE`, so
a client-supplied model name never becomes a label value.

Contract: every `request_started` is followed by exactly one `request_finished`
with the same route and client, streams included (a stream the caller abandons
finishes as `cancelled`); every upstream attempt that was sent reports one
`attempt_finished` (`cancelled` when the caller went away during it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

# The route label of requests that never resolved to a policy route.
UNKNOWN_ROUTE = "unknown"


class Observer(Protocol):
    def request_started(self, route: str, client: str) -> None: ...
    def request_finished(self, route: str, client: str, outcome: str, duration_s: float) -> None: ...
    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None: ...
    def retried(self, route: str, reason: str) -> None: ...
    def failed_over(self, route: str, from_provider: str, to_provider: str) -> None: ...
    def retry_budget_exhausted(self, route: str) -> None: ...
    def client_rate_limited(self, client: str, kind: str) -> None: ...
    def provider_throttled(self, provider: str) -> None: ...
    def breaker_changed(self, provider: str, target: str, state: str) -> None: ...
    # A read that brought `events` events after `gap_s`: one gap of gap_s, and events - 1 of zero (they came together).
    def stream_chunk_gap(self, provider: str, gap_s: float, events: int = 1) -> None: ...
    def malformed_event(self, provider: str) -> None: ...
    def upstream_resent(self, provider: str) -> None: ...
    def tokens_used(self, route: str, provider: str, prompt: int, completion: int) -> None: ...
    def state_backend_error(self, backend: str, operation: str) -> None: ...
    # Learning about providers: limit headers, moving-average latency, out-of-band probes, hedges.
    def limit_header_throttled(self, provider: str) -> None: ...
    # Read at scrape time, not reported per request: (provider, target, "stream" | "json", seconds).
    def watch_target_latencies(self, source: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None: ...
    def health_probed(self, provider: str, ok: bool) -> None: ...
    def hedged(self, route: str, outcome: str) -> None: ...  # won | lost | suppressed


class NullObserver:
    """Default: observing costs nothing when nobody listens."""

    __slots__ = ()

    def request_started(self, route: str, client: str) -> None:
        pass

    def request_finished(self, route: str, client: str, outcome: str, duration_s: float) -> None:
        pass

    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        pass

    def retried(self, route: str, reason: str) -> None:
        pass

    def failed_over(self, route: str, from_provider: str, to_provider: str) -> None:
        pass

    def retry_budget_exhausted(self, route: str) -> None:
        pass

    def client_rate_limited(self, client: str, kind: str) -> None:
        pass

    def provider_throttled(self, provider: str) -> None:
        pass

    def limit_header_throttled(self, provider: str) -> None:
        pass

    def watch_target_latencies(self, source: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        pass

    def health_probed(self, provider: str, ok: bool) -> None:
        pass

    def hedged(self, route: str, outcome: str) -> None:
        pass

    def breaker_changed(self, provider: str, target: str, state: str) -> None:
        pass

    def stream_chunk_gap(self, provider: str, gap_s: float, events: int = 1) -> None:
        pass

    def malformed_event(self, provider: str) -> None:
        pass

    def upstream_resent(self, provider: str) -> None:
        pass

    def tokens_used(self, route: str, provider: str, prompt: int, completion: int) -> None:
        pass

    def state_backend_error(self, backend: str, operation: str) -> None:
        pass
