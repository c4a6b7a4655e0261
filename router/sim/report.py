"""What a simulation shows, computed once from the `Outcomes`: the text, the JSON and the plot all read it.

Definitions (also in the output's legend):

- success rate: requests that got a complete answer (a JSON body, or a stream through `[DONE]`) over
  requests offered. A stream cut after its first event and not continued is a failure.
- attempts per request: the router's upstream attempts per request (its own count, as in
  `x-router-attempts`), mean and max.
- upstream load: attempts that reached a provider (refused connections included, counted by the
  simulated provider) over requests. Above attempts per request only when an attempt reached a
  provider twice (never here); below it when attempts never got a connection slot.
- latency: successful requests only, from arrival to the answer: a JSON body whole, a stream's
  first event (what its caller waits for before seeing anything).
- provider share: its share of the attempts that reached a provider; "served": its share of the
  successful answers.
- over time: requests by the time they arrived, in windows (10% of the duration each by default).
- recovery after an outage: "provider back" is the time from the outage's end to the arrival of the
  first request that provider answered successfully; "success back" is the time from the outage's end
  to the start of the first 5 s window of arrivals (stepping by 1 s) whose success rate is within 2
  percentage points of normal (0 when it never dropped below that). Normal: the success rate of the
  requests that arrived with no outage in progress and none over in the last 60 s (or, if there are
  none such, of those that arrived outside every outage).
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from typing import Any

from router.sim.driver import FAILED, Outcomes
from router.sim.profile import FaultProfile, Outage

RECOVERY_WINDOW_S = 5.0
RECOVERY_STEP_S = 1.0
RECOVERY_TOLERANCE = 0.02  # the success rate is "back" within 2 percentage points of normal
NORMAL_AFTER_S = 60.0  # "normal" leaves out the arrivals during an outage and this long after its end
QUANTILES = (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))


@dataclass(frozen=True)
class ProviderFigures:
    name: str
    profiled: bool  # named in the fault profile (else: instant, never failing)
    attempts: int  # that reached it
    share: float  # of the attempts that reached any provider
    served: int  # successful answers
    served_share: float  # of the successful answers
    decisions: dict[str, int]  # what it did with its attempts: ok, error_503, limit_429, stall, outage_...


@dataclass(frozen=True)
class Window:
    start_s: float
    end_s: float
    requests: int
    succeeded: int
    attempts: int
    served: dict[str, int]  # provider -> successful answers to requests that arrived in the window
    outages: tuple[str, ...]  # "aimo refused" for each outage overlapping the window

    @property
    def success_rate(self) -> float | None:
        return self.succeeded / self.requests if self.requests else None

    def share(self, provider: str) -> float | None:
        return self.served.get(provider, 0) / self.succeeded if self.succeeded else None


@dataclass(frozen=True)
class Recovery:
    provider: str
    outage: Outage
    requests_during: int
    success_during: float | None
    provider_back_s: float | None  # None: it never served again within the run
    success_back_s: float | None  # None: never back within the run


@dataclass
class Report:
    requests: int
    succeeded: int
    attempts: int  # the router's count
    max_attempts: int
    upstream_attempts: int  # that reached a provider
    latency_s: dict[str, float | None]
    providers: dict[str, ProviderFigures]
    windows: list[Window]
    recoveries: list[Recovery]
    failures: dict[str, int]  # outcome label -> requests
    normal_success_rate: float | None  # no outage in progress or just over (see _normal_rate)
    span_s: float  # the offered load's duration
    end_s: float  # when the last request ended
    stream_percent: float
    rate_per_s: float
    seed: int
    notes: list[str] = field(default_factory=list)

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.requests if self.requests else 0.0

    @property
    def attempts_per_request(self) -> float:
        return self.attempts / self.requests if self.requests else 0.0

    @property
    def load_multiplier(self) -> float:
        return self.upstream_attempts / self.requests if self.requests else 0.0

    @property
    def instant_providers(self) -> list[str]:
        return [p.name for p in self.providers.values() if not p.profiled]

    def as_json(self) -> dict[str, Any]:
        """The `--json` object: `requests, succeeded, success_rate, upstream_attempts, latency_s {p50, p99},
        providers {name: {attempts, share}}` as the contract fixes them, and more."""
        return {
            "requests": self.requests,
            "succeeded": self.succeeded,
            "success_rate": _round(self.success_rate),
            "upstream_attempts": self.upstream_attempts,
            "attempts_per_request": _round(self.attempts_per_request),
            "max_attempts": self.max_attempts,
            "load_multiplier": _round(self.load_multiplier),
            "latency_s": {name: _round(value) for name, value in self.latency_s.items()},
            "providers": {p.name: {"attempts": p.attempts, "share": _round(p.share), "served": p.served,
                                   "served_share": _round(p.served_share), "profiled": p.profiled,
                                   "outcomes": dict(sorted(p.decisions.items()))}
                          for p in self.providers.values()},
            "failures": dict(sorted(self.failures.items())),
            "windows": [{"start_s": _round(w.start_s), "end_s": _round(w.end_s), "requests": w.requests,
                         "success_rate": _round(w.success_rate), "attempts": w.attempts,
                         "served_share": {name: _round(w.share(name)) for name in self.providers},
                         "outages": list(w.outages)} for w in self.windows],
            "outages": [{"provider": r.provider, "kind": r.outage.kind, "start_s": r.outage.start_s,
                         "end_s": r.outage.end_s, "requests_during": r.requests_during,
                         "success_rate_during": _round(r.success_during), "provider_back_s": _round(r.provider_back_s),
                         "success_back_s": _round(r.success_back_s)} for r in self.recoveries],
            "normal_success_rate": _round(self.normal_success_rate),
            "duration_s": _round(self.span_s),
            "rate_per_s": self.rate_per_s,
            "stream_percent": self.stream_percent,
            "seed": self.seed,
            "notes": self.notes,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def build_report(outcomes: Outcomes, profile: FaultProfile, *, span_s: float, seed: int, windows: int = 10,
                 notes: list[str] | None = None) -> Report:
    served, attempts, arrivals = outcomes.served, outcomes.attempts, outcomes.schedule.arrivals
    names = outcomes.providers
    requests = len(outcomes)
    succeeded = sum(1 for index in served if index != FAILED)
    served_by = [0] * len(names)
    for index in served:
        if index != FAILED:
            served_by[index] += 1
    upstream = sum(outcomes.provider_attempts.values())
    providers = {name: ProviderFigures(
        name=name, profiled=name in profile.providers, attempts=outcomes.provider_attempts.get(name, 0),
        share=outcomes.provider_attempts.get(name, 0) / upstream if upstream else 0.0,
        served=served_by[i], served_share=served_by[i] / succeeded if succeeded else 0.0,
        decisions=outcomes.decisions.get(name, {})) for i, name in enumerate(names)}
    latencies = sorted(value for value in outcomes.latency if not math.isnan(value))
    outages = profile.outages
    normal_rate = _normal_rate(arrivals, served, [o for _, o in outages])
    return Report(
        requests=requests, succeeded=succeeded, attempts=sum(attempts), max_attempts=max(attempts, default=0),
        upstream_attempts=upstream, latency_s={name: _quantile(latencies, q) for name, q in QUANTILES},
        providers=providers, windows=_windows(outcomes, outages, span_s, windows),
        recoveries=[_recovery(outcomes, name, outage, normal_rate) for name, outage in outages],
        failures=dict(outcomes.failures), normal_success_rate=normal_rate, span_s=span_s, end_s=outcomes.end_s,
        stream_percent=profile.stream_percent, rate_per_s=profile.rate_per_s, seed=seed, notes=list(notes or []))


def _normal_rate(arrivals: Any, served: Any, outages: list[Outage]) -> float | None:
    """The success rate of requests that arrived with no outage in progress and none just over (within
    NORMAL_AFTER_S of its end); if that leaves none, of those that arrived outside every outage."""
    for after in (NORMAL_AFTER_S, 0.0):
        chosen = [i for i, t in enumerate(arrivals) if not any(o.start_s <= t < o.end_s + after for o in outages)]
        if chosen:
            return sum(1 for i in chosen if served[i] != FAILED) / len(chosen)
    return None


def _quantile(ordered: list[float], q: float) -> float | None:
    """Nearest rank: the smallest value with at least `q` of the values at or below it."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _windows(outcomes: Outcomes, outages: list[tuple[str, Outage]], span_s: float, count: int) -> list[Window]:
    width = span_s / count if span_s > 0 else 1.0
    names = outcomes.providers
    rows = [[0, 0, 0, [0] * len(names)] for _ in range(count)]
    for t, index, tried in zip(outcomes.schedule.arrivals, outcomes.served, outcomes.attempts, strict=True):
        row = rows[min(count - 1, int(t / width))]
        row[0] += 1
        row[2] += tried
        if index != FAILED:
            row[1] += 1
            row[3][index] += 1
    windows = []
    for k, (requests, succeeded, tried, by) in enumerate(rows):
        start, end = k * width, (k + 1) * width
        overlapping = tuple(f"{name} {o.kind}" for name, o in outages if o.start_s < end and o.end_s > start)
        windows.append(Window(start, end, requests, succeeded, tried, dict(zip(names, by, strict=True)), overlapping))
    return windows


def _recovery(outcomes: Outcomes, provider: str, outage: Outage, normal: float | None) -> Recovery:
    arrivals, served = outcomes.schedule.arrivals, outcomes.served
    me = outcomes.providers.index(provider)
    during = [i for i, t in enumerate(arrivals) if outage.covers(t)]
    success_during = sum(1 for i in during if served[i] != FAILED) / len(during) if during else None
    back = next((arrivals[i] - outage.end_s for i in range(len(arrivals))
                 if arrivals[i] >= outage.end_s and served[i] == me), None)
    return Recovery(provider, outage, len(during), success_during, back,
                    _success_back(arrivals, served, outage.end_s, normal))


def _success_back(arrivals: Any, served: Any, end_s: float, normal: float | None) -> float | None:
    if normal is None or not len(arrivals):
        return None
    last = arrivals[-1]
    t = end_s
    while t <= last:
        window = _between(arrivals, t, t + RECOVERY_WINDOW_S)
        if window and sum(1 for i in window if served[i] != FAILED) / len(window) >= normal - RECOVERY_TOLERANCE:
            return t - end_s
        t += RECOVERY_STEP_S
    return None


def _between(arrivals: Any, start: float, end: float) -> range:
    """Indices of the (sorted) arrivals in [start, end)."""
    return range(bisect.bisect_left(arrivals, start), bisect.bisect_left(arrivals, end))
