"""Prometheus metrics: an `Observer` that records the engine's events into a `CollectorRegistry`.

    observer = PrometheusObserver()              # or PrometheusObserver(your_registry)
    router = Router(policy, observer=observer)
    start_exporter(9464, observer.registry)      # embedded use: /metrics on 127.0.0.1:9464

The daemon builds one and serves its registry at `/metrics`. The names are public
API (the dashboards and alert rules in deploy/ depend on them); every one is listed
in the README. Label values come only from closed sets (see `router/observe/observer.py`):
policy route, provider, target and client names, `Reason` values and the engine's
request outcomes.

Cheap by construction. prometheus_client's own metric objects take a lock per
update and cost ~0.5 µs per counter increment and ~1.2 µs per histogram
observation; a request makes about ten updates, which measured ~5% of the
daemon's CPU per request. So the values live in plain lists here, found through a
dict keyed by the label tuple (one lookup per hook), and `collect()` turns them
into metric families when the registry is scraped. Updates happen on the event
loop's thread; a scrape from another thread (`start_exporter`) copies each list
before reading it, so a histogram's buckets and `_count` always agree.

This module and `router/server/context.py` are the only ones importing prometheus_client.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from router._version import __version__

__all__ = ["DURATION_BUCKETS", "FINE_BUCKETS", "CollectorRegistry", "PrometheusObserver", "start_exporter"]

# Whole requests and attempts: from a cached 5 ms answer to a 5-minute reasoning stream.
DURATION_BUCKETS = (.005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
# Time to first byte and the gap between stream chunks: milliseconds matter.
FINE_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1.0, 2.5, 5.0, 10.0, 30.0)

_BREAKER_VALUE = {"closed": 0.0, "open": 1.0}

Labels = tuple[str, ...]


class _Family:
    """One metric: its children are lists, keyed by label values.

    Counter and gauge child: `[value]`. Histogram child: one count per bucket (the
    last one is +Inf), then the sum: `child[bisect_left(bounds, x)] += 1; child[-1] += x`.
    """

    __slots__ = ("bounds", "children", "documentation", "kind", "label_names", "name")

    def __init__(self, kind: str, name: str, documentation: str, label_names: Sequence[str],
                 bounds: tuple[float, ...] = ()) -> None:
        self.kind = kind
        self.name = name
        self.documentation = documentation
        self.label_names = tuple(label_names)
        self.bounds = bounds
        self.children: dict[Labels, list[float]] = {}

    def child(self, labels: Labels) -> list[float]:
        found = self.children.get(labels)
        if found is None:
            found = self.children[labels] = [0.0] * (len(self.bounds) + 2 if self.kind == "histogram" else 1)
        return found

    def family(self, with_samples: bool = True) -> Metric:
        name = self.name.removesuffix("_total") if self.kind == "counter" else self.name
        if self.kind == "counter":
            out: Metric = CounterMetricFamily(name, self.documentation, labels=self.label_names)
        elif self.kind == "gauge":
            out = GaugeMetricFamily(name, self.documentation, labels=self.label_names)
        else:
            out = HistogramMetricFamily(name, self.documentation, labels=self.label_names)
        if not with_samples:
            return out
        les = [floatToGoString(b) for b in self.bounds] + ["+Inf"]
        for labels, child in list(self.children.items()):
            values = list(child)  # one copy: consistent even if the loop thread updates meanwhile
            if self.kind == "histogram":
                buckets, total = [], 0.0
                for le, count in zip(les, values, strict=False):
                    total += count
                    buckets.append((le, total))
                out.add_metric(labels, buckets, values[-1])  # type: ignore[attr-defined]
            else:
                out.add_metric(labels, values[0])  # type: ignore[attr-defined]
        return out


class _LiveFamily(_Family):
    """A gauge whose children are read from `source` when scraped (state the engine keeps anyway)."""

    __slots__ = ("source",)

    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        super().__init__("gauge", name, documentation, label_names)
        self.source: Callable[[], Iterable[tuple[str, ...]]] | None = None

    def family(self, with_samples: bool = True) -> Metric:
        source = self.source
        if with_samples and source is not None:
            self.children = {tuple(row[:-1]): [float(row[-1])] for row in source()}  # type: ignore[misc]
        return super().family(with_samples)


class _Collector:
    def __init__(self, families: Sequence[_Family]) -> None:
        self.families = families

    def describe(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        for family in self.families:
            yield family.family()


class PrometheusObserver:
    """Implements `router.observe.observer.Observer`; its metrics are collected by `registry`.

    Without a registry it makes its own (two routers in one process share nothing).
    Registering two observers into one registry raises prometheus_client's duplicate error.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        counter, gauge = "counter", "gauge"

        def histogram(name: str, documentation: str, labels: Sequence[str], bounds: tuple[float, ...]) -> _Family:
            return _Family("histogram", name, documentation, labels, bounds)

        self._requests = _Family(counter, "llm_router_requests_total",
                                 "Chat-completion requests by route, client and outcome.",
                                 ["route", "client", "outcome"])
        self._request_duration = histogram(
            "llm_router_request_duration_seconds",
            "Time from admission to the end of the answer, all attempts and backoffs included.",
            ["route", "outcome"], DURATION_BUCKETS)
        self._in_flight = _Family(gauge, "llm_router_requests_in_flight",
                                  "Requests being served (those queued for a client limit included).", ["route"])
        self._attempts = _Family(counter, "llm_router_upstream_attempts_total",
                                 "Upstream attempts by route, provider and outcome.", ["route", "provider", "outcome"])
        self._attempt_duration = histogram("llm_router_upstream_attempt_duration_seconds",
                                           "Duration of one upstream attempt (a stream: until its end).",
                                           ["provider", "outcome"], DURATION_BUCKETS)
        self._ttfb = histogram("llm_router_upstream_ttfb_seconds", "Time to the provider's response headers.",
                               ["provider"], FINE_BUCKETS)
        self._chunk_gap = histogram("llm_router_stream_chunk_gap_seconds",
                                    "Gap between two consecutive events of an upstream stream.",
                                    ["provider"], FINE_BUCKETS)
        self._retries = _Family(counter, "llm_router_retries_total",
                                "Attempts after the first, by the reason the previous one failed.",
                                ["route", "reason"])
        self._failovers = _Family(counter, "llm_router_failovers_total",
                                  "Switches from one provider to another within a request.",
                                  ["route", "from_provider", "to_provider"])
        self._budget_exhausted = _Family(counter, "llm_router_retry_budget_exhausted_total",
                                         "Retries refused because the shared retry budget was spent.", ["route"])
        self._client_limited = _Family(counter, "llm_router_client_rate_limited_total",
                                       "Requests refused by a client's own limit.", ["client", "kind"])
        self._provider_throttled = _Family(counter, "llm_router_provider_throttled_total",
                                           "Provider 429s that paused the provider until its Retry-After.",
                                           ["provider"])
        self._limit_throttled = _Family(counter, "llm_router_limit_header_throttles_total",
                                        "Times a provider's rate-limit headers said it had nothing left, pausing "
                                        "it until their reset before any 429.", ["provider"])
        self._target_latency = _LiveFamily("llm_router_target_latency_seconds",
                                       "Moving-average latency of a target (strategy: adaptive's estimate): time to "
                                       "first event for streams, whole answer for JSON.",
                                       ["provider", "target", "kind"])
        self._probes = _Family(counter, "llm_router_health_probes_total",
                               "Out-of-band health probes of ejected providers, by result.", ["provider", "outcome"])
        self._hedges = _Family(counter, "llm_router_hedges_total",
                               "Hedged attempts: won (the hedge answered first), lost (the first attempt did), "
                               "suppressed (the hedge budget was spent).", ["route", "outcome"])
        self._breaker_state = _Family(gauge, "llm_router_breaker_state",
                                      "Circuit breaker of a target: 0 closed, 1 open.", ["provider", "target"])
        self._ejections = _Family(counter, "llm_router_breaker_ejections_total", "Times a target's breaker opened.",
                                  ["provider", "target"])
        self._malformed = _Family(counter, "llm_router_malformed_events_total",
                                  "Stream events that were not JSON objects, skipped.", ["provider"])
        self._resends = _Family(counter, "llm_router_upstream_resends_total",
                                "Requests sent once more on a fresh connection, within one attempt, because the "
                                "kept-alive connection died before any byte of the answer.", ["provider"])
        self._tokens = _Family(counter, "llm_router_tokens_total",
                               "Tokens the providers reported in `usage`, by kind.", ["route", "provider", "kind"])
        self._backend_errors = _Family(counter, "llm_router_state_backend_errors_total",
                                       "Failed calls to the shared state backend.", ["backend", "operation"])
        self._reloads = _Family(counter, "llm_router_config_reloads_total", "Policy reloads by result.", ["result"])
        build_info = _Family(gauge, "llm_router_build_info", "Build information (value is always 1).", ["version"])
        build_info.child((__version__,))[0] = 1.0
        self.registry.register(_Collector([
            self._requests, self._request_duration, self._in_flight, self._attempts, self._attempt_duration,
            self._ttfb, self._chunk_gap, self._retries, self._failovers, self._budget_exhausted,
            self._client_limited, self._provider_throttled, self._breaker_state, self._ejections, self._malformed,
            self._resends, self._tokens, self._backend_errors, self._reloads, self._limit_throttled,
            self._target_latency, self._probes, self._hedges, build_info]))
        # Hot hooks: the children they update, under the hook's own arguments (no tuple for one label).
        self._in_flight_by_route: dict[str, list[float]] = {}
        self._request_children: dict[tuple[str, str, str], tuple[list[float], list[float], list[float]]] = {}
        self._attempt_children: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}
        self._ttfb_by_provider: dict[str, list[float]] = {}
        self._gap_by_provider: dict[str, list[float]] = {}
        self._token_children: dict[tuple[str, str], tuple[list[float], list[float]]] = {}

    # -- requests ------------------------------------------------------------------------------
    def request_started(self, route: str, client: str) -> None:
        gauge = self._in_flight_by_route.get(route)
        if gauge is None:
            gauge = self._in_flight_by_route[route] = self._in_flight.child((route,))
        gauge[0] += 1

    def request_finished(self, route: str, client: str, outcome: str, duration_s: float) -> None:
        key = (route, client, outcome)
        children = self._request_children.get(key)
        if children is None:
            children = self._request_children[key] = (self._requests.child(key),
                                                      self._request_duration.child((route, outcome)),
                                                      self._in_flight.child((route,)))
        counter, histogram, in_flight = children
        counter[0] += 1
        histogram[bisect_left(DURATION_BUCKETS, duration_s)] += 1
        histogram[-1] += duration_s
        in_flight[0] -= 1

    # -- upstream attempts ----------------------------------------------------------------------
    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        key = (route, provider, outcome)
        children = self._attempt_children.get(key)
        if children is None:
            children = self._attempt_children[key] = (self._attempts.child(key),
                                                      self._attempt_duration.child((provider, outcome)))
        counter, histogram = children
        counter[0] += 1
        histogram[bisect_left(DURATION_BUCKETS, duration_s)] += 1
        histogram[-1] += duration_s
        if ttfb_s is not None:
            ttfb = self._ttfb_by_provider.get(provider)
            if ttfb is None:
                ttfb = self._ttfb_by_provider[provider] = self._ttfb.child((provider,))
            ttfb[bisect_left(FINE_BUCKETS, ttfb_s)] += 1
            ttfb[-1] += ttfb_s

    def stream_chunk_gap(self, provider: str, gap_s: float, events: int = 1) -> None:
        gap = self._gap_by_provider.get(provider)
        if gap is None:
            gap = self._gap_by_provider[provider] = self._chunk_gap.child((provider,))
        gap[bisect_left(FINE_BUCKETS, gap_s)] += 1
        gap[-1] += gap_s
        if events > 1:
            gap[0] += events - 1  # the events that came in the same read: gaps of zero

    def tokens_used(self, route: str, provider: str, prompt: int, completion: int) -> None:
        key = (route, provider)
        children = self._token_children.get(key)
        if children is None:
            children = self._token_children[key] = (self._tokens.child((route, provider, "prompt")),
                                                    self._tokens.child((route, provider, "completion")))
        children[0][0] += prompt
        children[1][0] += completion

    # -- decisions (on failures only) -------------------------------------------------------------
    def retried(self, route: str, reason: str) -> None:
        self._retries.child((route, reason))[0] += 1

    def failed_over(self, route: str, from_provider: str, to_provider: str) -> None:
        self._failovers.child((route, from_provider, to_provider))[0] += 1

    def retry_budget_exhausted(self, route: str) -> None:
        self._budget_exhausted.child((route,))[0] += 1

    def client_rate_limited(self, client: str, kind: str) -> None:
        self._client_limited.child((client, kind))[0] += 1

    def provider_throttled(self, provider: str) -> None:
        self._provider_throttled.child((provider,))[0] += 1

    def limit_header_throttled(self, provider: str) -> None:
        self._limit_throttled.child((provider,))[0] += 1

    def watch_target_latencies(self, source: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        self._target_latency.source = source  # type: ignore[assignment]

    def health_probed(self, provider: str, ok: bool) -> None:
        self._probes.child((provider, "ok" if ok else "failed"))[0] += 1

    def hedged(self, route: str, outcome: str) -> None:
        self._hedges.child((route, outcome))[0] += 1

    def breaker_changed(self, provider: str, target: str, state: str) -> None:
        self._breaker_state.child((provider, target))[0] = _BREAKER_VALUE.get(state, 1.0)
        if state == "open":
            self._ejections.child((provider, target))[0] += 1

    def malformed_event(self, provider: str) -> None:
        self._malformed.child((provider,))[0] += 1

    def upstream_resent(self, provider: str) -> None:
        self._resends.child((provider,))[0] += 1

    # -- beyond the engine: the daemon and the state backend --------------------------------------
    def count_reload(self, ok: bool) -> None:
        self._reloads.child(("success" if ok else "failure",))[0] += 1

    def state_backend_error(self, backend: str, operation: str) -> None:
        self._backend_errors.child((backend, operation))[0] += 1


def start_exporter(port: int, registry: CollectorRegistry | None = None,
                   addr: str = "127.0.0.1") -> tuple[WSGIServer, threading.Thread]:
    """Serve `registry` (default: prometheus_client's global one) as Prometheus text on
    http://addr:port/ from a daemon thread. Returns the server and its thread;
    `server.shutdown()` stops it."""
    return start_http_server(port, addr=addr, registry=registry if registry is not None else REGISTRY)
