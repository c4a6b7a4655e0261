"""The resilience scenarios, sized by their arguments: the CI tests run them small, `bench/soak.py` big.

Each returns a report of measured figures; the callers decide what must hold (the tests
assert the issue's thresholds, the bench prints them and exits non-zero on a miss).

- `run_soak`: mixed faults at every provider, random client disconnects, JSON and SSE,
  through the daemon at high concurrency; reconciles client, access log and /metrics.
- `run_one_down`: one of three providers refuses connections for `outage_s`.
- `run_all_down`: every provider refuses connections; the retry budget bounds upstream load.
- `run_leak`: steady load, then idle: RSS trend, tasks, sockets and fds back to baseline.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import re
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from router.mock import Hit
from tests.support.daemon import DaemonProcess
from tests.support.load import (
    CANCELLED,
    COMPLETE,
    ERROR,
    LoadConfig,
    LoadRun,
    Metrics,
    ProcSample,
    Result,
    percentile,
    plan_for,
    proc_sample,
    run_load,
    slope,
)
from tests.support.soak_env import FAULT_MIX, SoakProviders, failing_rate, soak_policy

SOAK_BUDGET = {"percent": 50.0, "min_per_second": 5.0, "window_s": 10.0}
# 5% + 1/s: at 200 requests/s an outage adds at most 5.5% upstream attempts (the issue allows 10%).
OUTAGE_BUDGET = {"percent": 5.0, "min_per_second": 1.0, "window_s": 10.0}
MAX_ATTEMPTS = 3
_DAEMON_ERROR = re.compile(r" (ERROR|CRITICAL) |Traceback")


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)


def daemon_errors(stderr: str) -> list[str]:
    """Lines of the daemon's stderr at ERROR or above, or tracebacks."""
    return [line for line in stderr.splitlines() if _DAEMON_ERROR.search(line)]


def budget_bound(budget: Mapping[str, float], *, requests: int, duration_s: float, max_attempts: int) -> float:
    """Upstream attempts per request allowed by max_attempts and the retry budget.

    Retries in any window of `window_s` are at most `percent`% of the window's requests plus
    `min_per_second * window_s`; tiling the run into ceil(T / W) windows:
        attempts / N <= min(max_attempts, 1 + percent/100 + min_per_second * W * ceil(T / W) / N)
    """
    window = budget["window_s"]
    floor = budget["min_per_second"] * window * math.ceil(max(duration_s, 1e-9) / window)
    return min(float(max_attempts), 1 + budget["percent"] / 100 + floor / max(requests, 1))


def independent_model(p: float, m: int) -> tuple[float, float]:
    """(expected attempts per request, expected success ratio) when each attempt fails with probability
    p independently and a request may make m attempts: E = (1 - p^m) / (1 - p), success = 1 - p^m."""
    if p >= 1:
        return float(m), 0.0
    return (1 - p ** m) / (1 - p), 1 - p ** m


async def settled_access_log(daemon: DaemonProcess, at_least: int, within_s: float = 5.0) -> list[dict[str, Any]]:
    """The access log once it has `at_least` lines and stopped growing for 0.3 s."""
    deadline = time.monotonic() + within_s
    lines = daemon.access_log()
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        again = daemon.access_log()
        if len(again) != len(lines):
            lines, stable_since = again, time.monotonic()
        elif len(lines) >= at_least and time.monotonic() - stable_since >= 0.3:
            break
    return lines


@dataclass
class DisconnectEffects:
    disconnects: int  # requests the client abandoned
    close_delays: list[float]  # every attempt open at or after that moment: seconds from it to the close
    first_after: list[float]  # first attempts that started after their client had gone: how long after
    late_attempts: list[float]  # retries or failovers that started after their client had gone: how long after
    unclosed: list[str]  # request ids with an attempt still open when checked
    # Retries or failovers after the client left that neither the daemon's read lag (the latest first
    # attempt read after its client left) nor the daemon's own record of the request (its access line,
    # when `ended` is given) explains.
    unexplained: list[str] = field(default_factory=list)


def disconnect_effects(results: list[Result], watched: Mapping[str, list[Hit]],
                       ended: Mapping[str, float] | None = None, provider_lag: float = 0.0) -> DisconnectEffects:
    """What the providers saw of the requests the client abandoned (their hits, by request id).

    A first attempt may start after the client left when the daemon reads the request only after
    the client closed (a busy daemon reads the request, then the close); a retry or a failover
    starting after the client left is an attempt the router should not have made, unless it had
    not read the close yet either (so the test keeps the daemon far from saturation).

    `ended` (request id -> this process's monotonic time of the daemon's access line) tells,
    request by request, when the daemon was done with it: an attempt it sent before reaches the
    provider by then plus `LOGGED_END_SLACK_S`, plus twice `provider_lag`, the worst lag of the
    providers' event loop (one turn to read the request, one to start its handler)."""
    effects = DisconnectEffects(0, [], [], [], [])
    late: list[tuple[str, float, float]] = []  # request id, seconds after the client left, ... after the daemon's end
    for r in results:
        if r.disconnected_at is None:
            continue
        effects.disconnects += 1
        hits = sorted(watched.get(r.request_id, ()), key=lambda hit: hit.started)
        for index, hit in enumerate(hits):
            if hit.ended is not None and hit.ended <= r.disconnected_at:
                continue  # over before the client left
            if hit.ended is None:
                effects.unclosed.append(r.request_id)
                continue
            effects.close_delays.append(hit.ended - r.disconnected_at)
            if hit.started <= r.disconnected_at:
                continue
            if not index:
                effects.first_after.append(hit.started - r.disconnected_at)
                continue
            effects.late_attempts.append(hit.started - r.disconnected_at)
            end = None if ended is None else ended.get(r.request_id)
            late.append((r.request_id, hit.started - r.disconnected_at, math.inf if end is None else hit.started - end))
    read_lag = max([LOGGED_END_SLACK_S, *effects.first_after])  # first_after may be empty
    delivery = LOGGED_END_SLACK_S + 2 * provider_lag
    effects.unexplained = [f"{rid}: {after * 1000:.1f} ms after the client left, {past_end * 1000:.1f} ms after "
                           f"the daemon logged its end (read lag {read_lag * 1000:.1f} ms, allowed after the end "
                           f"{delivery * 1000:.1f} ms)"
                           for rid, after, past_end in late if after > read_lag and past_end > delivery]
    return effects


# An attempt the daemon sent just before it finished a request reaches the provider a moment later;
# the access line's `ts` has millisecond resolution.
LOGGED_END_SLACK_S = 0.010


def logged_ends(lines: list[dict[str, Any]]) -> dict[str, float]:
    """Request id -> when the daemon wrote its access line, on this process's monotonic clock (the
    line's `ts` is wall-clock time; both processes read the same machine's clocks)."""
    offset = time.time() - time.monotonic()
    return {str(line["request_id"]): float(line["ts"]) - offset for line in lines if "ts" in line}


# -- 1. the soak ------------------------------------------------------------------------------------

@dataclass
class SoakReport:
    requests: int
    duration_s: float
    concurrency: int
    outcomes: Counter[str]
    details: dict[str, Counter[str]]
    success_ratio: float  # complete / (requests - cancelled by the client)
    attempts: float  # llm_router_upstream_attempts_total
    attempts_by_outcome: dict[str, float]
    daemon_requests: float  # llm_router_requests_total
    attempts_per_request: float
    max_header_attempts: int
    budget_bound: float
    measured_p: float  # failed attempts / attempts (from the daemon's attempt outcomes)
    configured_p_json: float
    configured_p_stream: float
    model_attempts: float
    model_success: float
    fake_hits: int
    resends: float  # llm_router_upstream_resends_total: requests sent twice within one attempt
    access_lines: int
    metrics_by_outcome: dict[str, float]
    access_by_outcome: dict[str, int]
    histogram_count: float
    in_flight_after: float
    never_reached: list[str]  # cancelled requests without an access line
    never_reached_with_hits: list[str]  # ... that a provider saw anyway (must be empty)
    mismatches: list[str]  # client vs access-log disagreements (must be empty)
    disconnects: int  # requests the client abandoned
    close_delays: list[float]  # upstream attempt in flight at a disconnect: seconds until closed
    first_after: list[float]  # first attempts started after their client had gone: seconds after
    late_attempts: list[float]  # retries/failovers started after their client had gone: seconds after
    late_unexplained: list[str]  # ... later than the daemon's read lag and than its own end of the request
    loop_lag: float  # the load generator's and fake providers' event loop: its worst lag
    unclosed: list[str]  # in-flight attempts still open when checked
    daemon_errors: list[str]
    restarts: int
    faults_drawn: Counter[str]
    latencies: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        out = [
            f"soak: {self.requests} requests in {self.duration_s:.1f} s ({self.requests / self.duration_s:.0f}/s), "
            f"concurrency {self.concurrency}, provider restarts {self.restarts}",
            f"  outcomes {dict(self.outcomes)}",
            f"  errors {dict(self.details.get(ERROR, {}))}",
            f"  anomalies {dict(self.details.get('anomaly', {}))}",
            f"  success ratio {self.success_ratio:.4%} (model 1 - p^m = {self.model_success:.4%})",
            f"  attempts/request {self.attempts_per_request:.4f} (model (1-p^m)/(1-p) = {self.model_attempts:.4f}; "
            f"bound {self.budget_bound:.4f}); max x-router-attempts {self.max_header_attempts}",
            f"  p measured {self.measured_p:.4f}, configured JSON {self.configured_p_json:.3f} / "
            f"stream {self.configured_p_stream:.3f}",
            f"  attempts {self.attempts:.0f} by outcome {self.attempts_by_outcome}",
            f"  fake hits {self.fake_hits} (resends {self.resends:.0f}); access lines {self.access_lines}; "
            f"/metrics requests {self.daemon_requests:.0f}; never reached the daemon {len(self.never_reached)}",
            f"  disconnects {self.disconnects}: {len(self.close_delays)} upstream attempts open then or later, closed "
            f"after max {max(self.close_delays, default=0) * 1000:.1f} ms / p99 "
            f"{percentile(self.close_delays, 99) * 1000:.1f} ms; first attempts read after the client left "
            f"{len(self.first_after)} (max {max(self.first_after, default=0) * 1000:.1f} ms after); retries or "
            f"failovers after it {len(self.late_attempts)} (max {max(self.late_attempts, default=0) * 1000:.1f} ms, "
            f"{len(self.late_unexplained)} neither the daemon's read lag nor its end of the request explains; "
            f"this process's loop lag max {self.loop_lag * 1000:.1f} ms)",
            f"  latency p50 {self.latencies.get('p50', 0):.3f} s p99 {self.latencies.get('p99', 0):.3f} s "
            f"max {self.latencies.get('max', 0):.3f} s",
            f"  faults drawn at the providers {dict(self.faults_drawn.most_common())}",
            f"  daemon error lines {len(self.daemon_errors)}",
        ]
        return "\n".join(out)


async def run_soak(*, requests: int, workdir: Path, concurrency: int = 128, max_duration_s: float = 600.0,
                   seed: int = 1, disconnect_ratio: float = 0.02, flap: bool = True) -> SoakReport:
    _make_dir(workdir)
    config_args: dict[str, Any] = {"requests": requests, "duration_s": max_duration_s, "concurrency": concurrency,
                                   "stream_ratio": 0.5, "disconnect_ratio": disconnect_ratio, "seed": seed,
                                   "id_prefix": "soak", "timeout_s": 30.0}
    async with SoakProviders(seed=seed) as providers:
        policy = soak_policy(providers.base_urls(), budget=SOAK_BUDGET, max_attempts=MAX_ATTEMPTS)
        async with DaemonProcess(policy, workdir) as daemon:
            config = LoadConfig(url=daemon.chat_url, **config_args)
            providers.watch(f"soak-{i}" for i in range(requests)
                            if (p := plan_for(config, i)).disconnect_delay_s is not None
                            or p.disconnect_after_events is not None)
            stop = asyncio.Event()
            flapper = asyncio.create_task(providers.flap(stop, seed=seed)) if flap else None
            try:
                run = await run_load(config)
            finally:
                stop.set()
                if flapper is not None:
                    await flapper
            await asyncio.sleep(1.1)  # an upstream attempt must close within 1 s of its client leaving
            providers.scan()
            not_cancelled = sum(1 for r in run.results if r.outcome != CANCELLED)
            lines = await settled_access_log(daemon, not_cancelled)
            async with aiohttp.ClientSession() as session:
                metrics = await daemon.metrics(session)
            stderr = daemon.stderr()
        return _soak_report(run, providers, lines, metrics, stderr)


def _soak_report(run: LoadRun, providers: SoakProviders, lines: list[dict[str, Any]], metrics: Metrics,
                 stderr: str) -> SoakReport:
    results = run.results
    outcomes = run.outcomes()
    cancelled = outcomes.get(CANCELLED, 0)
    served = len(results) - cancelled
    attempts = metrics.get("llm_router_upstream_attempts_total")
    by_outcome = metrics.by("llm_router_upstream_attempts_total", "outcome")
    daemon_requests = metrics.get("llm_router_requests_total")
    failed = sum(v for k, v in by_outcome.items() if k not in ("ok", "cancelled"))
    measured_p = failed / max(attempts - by_outcome.get("cancelled", 0), 1)
    model_attempts, model_success = independent_model(measured_p, MAX_ATTEMPTS)

    mismatches: list[str] = []
    by_id: dict[str, dict[str, Any]] = {}
    for line in lines:
        request_id = line.get("request_id")
        if request_id in by_id:
            mismatches.append(f"two access lines for {request_id}")
        by_id[str(request_id)] = line
    known = {r.request_id for r in results}
    mismatches.extend(f"access line for an unknown request {rid}" for rid in by_id if rid not in known)
    never_reached: list[str] = []
    for r in results:
        line = by_id.get(r.request_id)
        if line is None:
            if r.outcome == CANCELLED:
                never_reached.append(r.request_id)
            else:
                mismatches.append(f"{r.request_id}: {r.outcome} {r.detail} at the client, no access line")
            continue
        if r.outcome == CANCELLED:
            continue  # the daemon may have finished first; its own outcome is reconciled with /metrics below
        if line["status"] != r.status:
            mismatches.append(f"{r.request_id}: status {r.status} at the client, {line['status']} logged")
        if (line["outcome"] == "success") != (r.outcome == COMPLETE):
            mismatches.append(f"{r.request_id}: {r.outcome} {r.detail} at the client, {line['outcome']} logged")
        if r.attempts is not None and ((not r.stream and line["attempts"] != r.attempts)
                                       or (r.stream and line["attempts"] < r.attempts)):
            mismatches.append(f"{r.request_id}: x-router-attempts {r.attempts}, {line['attempts']} logged")
    never_reached_with_hits = [rid for rid in never_reached if providers.watched.get(rid)]

    effects = disconnect_effects(results, providers.watched, logged_ends(lines), run.max_loop_lag)
    latencies = [r.latency for r in results if r.outcome != CANCELLED]
    access_by_outcome = Counter(str(line["outcome"]) for line in lines)
    return SoakReport(
        requests=len(results), duration_s=run.duration, concurrency=run.config.concurrency, outcomes=outcomes,
        details={o: run.details(o) for o in outcomes}, success_ratio=outcomes.get(COMPLETE, 0) / max(served, 1),
        attempts=attempts, attempts_by_outcome=by_outcome, daemon_requests=daemon_requests,
        attempts_per_request=attempts / max(daemon_requests, 1),
        max_header_attempts=max((r.attempts or 0 for r in results), default=0),
        budget_bound=budget_bound(SOAK_BUDGET, requests=int(daemon_requests), duration_s=run.duration,
                                  max_attempts=MAX_ATTEMPTS),
        measured_p=measured_p, configured_p_json=failing_rate(FAULT_MIX, stream=False),
        configured_p_stream=failing_rate(FAULT_MIX, stream=True), model_attempts=model_attempts,
        model_success=model_success, fake_hits=providers.total_hits,
        resends=metrics.get("llm_router_upstream_resends_total"), access_lines=len(lines),
        metrics_by_outcome=metrics.by("llm_router_requests_total", "outcome"),
        access_by_outcome=dict(access_by_outcome),
        histogram_count=metrics.get("llm_router_request_duration_seconds_count"),
        in_flight_after=metrics.get("llm_router_requests_in_flight"),
        never_reached=never_reached, never_reached_with_hits=never_reached_with_hits, mismatches=mismatches,
        disconnects=effects.disconnects, close_delays=effects.close_delays, first_after=effects.first_after,
        late_attempts=effects.late_attempts, late_unexplained=effects.unexplained, loop_lag=run.max_loop_lag,
        unclosed=effects.unclosed,
        daemon_errors=daemon_errors(stderr), restarts=providers.restarts, faults_drawn=providers.faults_drawn(),
        latencies={"p50": percentile(latencies, 50), "p99": percentile(latencies, 99),
                   "max": max(latencies, default=0.0)})


# -- 2a. one provider down ---------------------------------------------------------------------------

@dataclass
class OutageReport:
    outage_s: float
    rate: float
    detection_s: float | None  # from the outage to the breaker of the dead provider opening
    requests: int  # sent during the outage
    after_detection: int
    success_after_detection: float
    success_whole_outage: float
    extra_attempts: float  # (attempts - requests) / requests over the outage, from x-router-attempts
    extra_attempts_metrics: float  # the same from /metrics deltas
    anomalies: int
    errors: Counter[str]
    recovery_s: float | None  # from the provider's return to its first answer again
    late_starts: int  # requests that could not start on time (load generator saturated)

    def summary(self) -> str:
        detection = f"{self.detection_s:.3f} s" if self.detection_s is not None else "never"
        recovery = f"{self.recovery_s:.2f} s" if self.recovery_s is not None else "not within the run"
        return "\n".join([
            f"one of three providers refusing connections for {self.outage_s:.0f} s at {self.rate:.0f} requests/s",
            f"  detection (breaker open) after {detection}",
            f"  requests during the outage {self.requests}, after detection {self.after_detection}",
            f"  success after detection {self.success_after_detection:.4%}; over the whole outage "
            f"{self.success_whole_outage:.4%}",
            f"  extra upstream attempts over the outage {self.extra_attempts:.4%} (x-router-attempts), "
            f"{self.extra_attempts_metrics:.4%} (/metrics)",
            f"  errors {dict(self.errors)}; anomalies {self.anomalies}; back in service {recovery} after it returned",
        ])


def _extra(results: list[Result]) -> float:
    counted = [r for r in results if r.attempts is not None]
    return sum(r.attempts - 1 for r in counted if r.attempts) / max(len(counted), 1)  # type: ignore[operator]


async def run_one_down(*, outage_s: float, workdir: Path, rate: float = 200.0, before_s: float = 2.0,
                       after_s: float = 2.0, down: str = "alpha", seed: int = 2) -> OutageReport:
    _make_dir(workdir)
    async with SoakProviders(seed=seed, mix={}) as providers:
        policy = soak_policy(providers.base_urls(), budget=OUTAGE_BUDGET)
        async with DaemonProcess(policy, workdir) as daemon, aiohttp.ClientSession() as session:
            config = LoadConfig(url=daemon.chat_url, requests=int(rate * (before_s + outage_s + after_s)) + 1,
                                duration_s=before_s + outage_s + after_s, rate=rate, concurrency=64, seed=seed,
                                id_prefix="outage")
            marks: dict[str, float] = {}
            counts: dict[str, tuple[float, float]] = {}

            async def control() -> None:
                await asyncio.sleep(before_s)
                counts["down"] = await _attempts_and_requests(daemon, session)
                marks["down"] = time.monotonic()
                await providers.take_down(down)
                end = marks["down"] + outage_s
                while time.monotonic() < end and "detected" not in marks:
                    metrics = await daemon.metrics(session)
                    if metrics.get("llm_router_breaker_state", provider=down) >= 1:
                        marks["detected"] = time.monotonic()
                    else:
                        await asyncio.sleep(0.02)
                await asyncio.sleep(max(0.0, end - time.monotonic()))
                counts["up"] = await _attempts_and_requests(daemon, session)
                await providers.bring_up(down)
                marks["up"] = time.monotonic()

            run, _ = await asyncio.gather(run_load(config), control())
    during = run.between(marks["down"], marks["up"])
    detected = marks.get("detected")
    after = [r for r in during if detected is not None and r.started >= detected]
    back = [r.started - marks["up"] for r in run.results if r.started >= marks["up"] and r.provider == down
            and r.outcome == COMPLETE]
    (a0, n0), (a1, n1) = counts["down"], counts["up"]
    return OutageReport(
        outage_s=outage_s, rate=rate, detection_s=None if detected is None else detected - marks["down"],
        requests=len(during), after_detection=len(after),
        success_after_detection=_ratio(after, COMPLETE), success_whole_outage=_ratio(during, COMPLETE),
        extra_attempts=_extra(during), extra_attempts_metrics=(a1 - a0 - (n1 - n0)) / max(n1 - n0, 1),
        anomalies=sum(1 for r in during if r.outcome == "anomaly"),
        errors=Counter(r.detail for r in during if r.outcome == ERROR),
        recovery_s=min(back, default=None), late_starts=run.late_starts)


def _ratio(results: list[Result], outcome: str) -> float:
    return sum(1 for r in results if r.outcome == outcome) / max(len(results), 1)


async def _attempts_and_requests(daemon: DaemonProcess, session: aiohttp.ClientSession) -> tuple[float, float]:
    metrics = await daemon.metrics(session)
    return metrics.get("llm_router_upstream_attempts_total"), metrics.get("llm_router_requests_total")


# -- 2b. every provider down ------------------------------------------------------------------------

@dataclass
class AllDownReport:
    down_s: float
    rate: float
    measured_from_s: float  # after the outage began
    requests: int  # /metrics delta over the measured window
    attempts: int
    attempts_per_request: float
    bound: float  # the retry budget's bound for this rate (budget_bound)
    statuses: Counter[int]  # client statuses over the measured window
    with_retry_after: float  # share of 503s carrying Retry-After
    latency_p50: float
    latency_p99: float
    latency_max: float
    anomalies: int
    cpu_per_s: list[float]  # daemon CPU seconds per second, per sample interval over the outage
    rss_mb: list[float]
    cpu_halves: tuple[float, float]  # mean CPU utilisation in the first / second half of the outage
    rss_growth: float  # last RSS over the RSS 1 s into the outage, minus 1
    rss_slope_kb_s: float
    late_starts: int

    def summary(self) -> str:
        return "\n".join([
            f"every provider refusing connections for {self.down_s:.0f} s at {self.rate:.0f} requests/s "
            f"(measured from {self.measured_from_s:.0f} s on)",
            f"  upstream attempts / client requests {self.attempts}/{self.requests} = "
            f"{self.attempts_per_request:.4f} (budget bound {self.bound:.4f})",
            f"  statuses {dict(self.statuses)}; 503s with Retry-After {self.with_retry_after:.2%}",
            f"  latency p50 {self.latency_p50 * 1000:.1f} ms p99 {self.latency_p99 * 1000:.1f} ms "
            f"max {self.latency_max * 1000:.1f} ms",
            f"  daemon CPU {self.cpu_halves[0]:.1%} then {self.cpu_halves[1]:.1%} of a core (first / second half); "
            f"RSS {self.rss_mb[0]:.1f} -> {self.rss_mb[-1]:.1f} MB ({self.rss_growth:+.2%}, "
            f"slope {self.rss_slope_kb_s:+.2f} KB/s)",
        ])


async def _sample(pid: int, samples: list[ProcSample], stop: asyncio.Event, every_s: float) -> None:
    while not stop.is_set():
        with contextlib.suppress(OSError):
            samples.append(proc_sample(pid))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)


async def run_all_down(*, down_s: float, workdir: Path, rate: float = 200.0, before_s: float = 2.0,
                       measure_after_s: float = 10.0, seed: int = 3) -> AllDownReport:
    _make_dir(workdir)
    async with SoakProviders(seed=seed, mix={}) as providers:
        policy = soak_policy(providers.base_urls(), budget=OUTAGE_BUDGET)
        async with DaemonProcess(policy, workdir) as daemon, aiohttp.ClientSession() as session:
            config = LoadConfig(url=daemon.chat_url, requests=int(rate * (before_s + down_s)) + 1,
                                duration_s=before_s + down_s, rate=rate, concurrency=64, seed=seed,
                                id_prefix="alldown")
            marks: dict[str, float] = {}
            counts: dict[str, tuple[float, float]] = {}
            samples: list[ProcSample] = []
            stop = asyncio.Event()

            async def control() -> None:
                await asyncio.sleep(before_s)
                marks["down"] = time.monotonic()
                for name in providers.names:
                    await providers.take_down(name)
                sampler = asyncio.create_task(_sample(daemon.pid, samples, stop, 0.5))
                await asyncio.sleep(max(0.0, marks["down"] + measure_after_s - time.monotonic()))
                counts["from"] = await _attempts_and_requests(daemon, session)
                marks["from"] = time.monotonic()
                await asyncio.sleep(max(0.0, marks["down"] + down_s - time.monotonic()))
                counts["to"] = await _attempts_and_requests(daemon, session)
                marks["to"] = time.monotonic()
                stop.set()
                await sampler

            run, _ = await asyncio.gather(run_load(config), control())
    window = run.between(marks["from"], marks["to"])
    (a0, n0), (a1, n1) = counts["from"], counts["to"]
    statuses = Counter(r.status or 0 for r in window)
    unavailable = [r for r in window if r.status == 503]
    latencies = [r.latency for r in window]
    cpu = [(b.cpu_s - a.cpu_s) / (b.t - a.t) for a, b in itertools.pairwise(samples) if b.t > a.t]
    half = len(cpu) // 2
    rss = [s.rss_bytes / 2**20 for s in samples]
    settled = [s for s in samples if s.t >= marks["down"] + 1.0] or samples
    return AllDownReport(
        down_s=down_s, rate=rate, measured_from_s=measure_after_s, requests=int(n1 - n0), attempts=int(a1 - a0),
        attempts_per_request=(a1 - a0) / max(n1 - n0, 1),
        bound=budget_bound(OUTAGE_BUDGET, requests=int(n1 - n0), duration_s=marks["to"] - marks["from"],
                           max_attempts=MAX_ATTEMPTS),
        statuses=statuses, with_retry_after=sum(1 for r in unavailable if r.retry_after) / max(len(unavailable), 1),
        latency_p50=percentile(latencies, 50), latency_p99=percentile(latencies, 99),
        latency_max=max(latencies, default=0.0), anomalies=sum(1 for r in run.results if r.outcome == "anomaly"),
        cpu_per_s=cpu, rss_mb=rss,
        cpu_halves=(sum(cpu[:half]) / max(half, 1), sum(cpu[half:]) / max(len(cpu) - half, 1)),
        rss_growth=settled[-1].rss_bytes / settled[0].rss_bytes - 1,
        rss_slope_kb_s=slope([s.t for s in settled], [s.rss_bytes / 1024 for s in settled]),
        late_starts=run.late_starts)


# -- 4. leaks ----------------------------------------------------------------------------------------

@dataclass
class LeakReport:
    load_s: float
    warmup_s: float
    rate: float
    requests: int
    outcomes: Counter[str]
    baseline: ProcSample
    baseline_tasks: int
    peak: ProcSample  # most fds during the load
    peak_tasks: int
    rss_warm_mb: float  # median RSS over the first samples after warm-up
    rss_end_mb: float  # median RSS over the last samples of the load
    rss_growth: float  # end / warm - 1
    rss_slope_kb_min: float  # least-squares slope after warm-up
    trend_over_run: float  # slope * (load_s - warmup_s) / warm RSS
    trend_per_hour: float  # slope * 3600 s / warm RSS
    settled_after_s: float | None  # after the load: tasks, sockets and fds back to baseline (None: not within)
    after: ProcSample
    after_tasks: int
    rss_series: list[tuple[float, float, int]]  # (seconds since load start, MB, daemon tasks)
    late_starts: int  # requests sent over 50 ms after their due time: the load was not steady then
    max_start_lag: float

    def summary(self) -> str:
        settled = f"{self.settled_after_s:.1f} s" if self.settled_after_s is not None else "NOT within the limit"
        return "\n".join([
            f"leak check: {self.requests} requests in {self.load_s:.0f} s at {self.rate:.0f}/s "
            f"(warm-up {self.warmup_s:.0f} s); outcomes {dict(self.outcomes)}",
            f"  RSS after warm-up {self.rss_warm_mb:.1f} MB, at the end {self.rss_end_mb:.1f} MB "
            f"({self.rss_growth:+.2%}); slope {self.rss_slope_kb_min:+.1f} KB/min "
            f"= {self.trend_over_run:+.2%} over the run, {self.trend_per_hour:+.2%} per hour",
            f"  tasks {self.baseline_tasks} -> peak {self.peak_tasks} -> {self.after_tasks}; sockets "
            f"{self.baseline.sockets} -> {self.peak.sockets} -> {self.after.sockets}; fds {self.baseline.fds} -> "
            f"{self.peak.fds} -> {self.after.fds}; threads {self.baseline.threads} -> {self.after.threads}",
            f"  back to baseline {settled} after the load stopped; requests sent late {self.late_starts} "
            f"(max lag {self.max_start_lag * 1000:.0f} ms)",
        ])


async def run_leak(*, load_s: float, workdir: Path, rate: float = 300.0, warmup_s: float | None = None,
                   settle_within_s: float = 60.0, sample_every_s: float = 0.5, seed: int = 4) -> LeakReport:
    _make_dir(workdir)
    warmup = warmup_s if warmup_s is not None else min(60.0, load_s / 4)
    async with SoakProviders(seed=seed) as providers:
        policy = soak_policy(providers.base_urls(), budget=SOAK_BUDGET)
        async with DaemonProcess(policy, workdir, probe=True) as daemon:
            await asyncio.sleep(0.5)
            baseline, baseline_tasks = proc_sample(daemon.pid), await daemon.task_count()
            config = LoadConfig(url=daemon.chat_url, requests=int(rate * load_s) + 1, duration_s=load_s, rate=rate,
                                concurrency=128, disconnect_ratio=0.02, seed=seed, id_prefix="leak")
            samples: list[ProcSample] = []
            tasks_seen: list[int] = []
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    with contextlib.suppress(OSError):
                        sampled = proc_sample(daemon.pid)
                        tasks_seen.append(await daemon.task_count())
                        samples.append(sampled)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), sample_every_s)

            sampler = asyncio.create_task(sample())
            try:
                run = await run_load(config, keep_results=False)
            finally:
                stop.set()
                await sampler
            stopped = time.monotonic()
            settled_after: float | None = None
            after, after_tasks = proc_sample(daemon.pid), await daemon.task_count()
            while True:
                if after_tasks <= baseline_tasks and after.sockets <= baseline.sockets and after.fds <= baseline.fds:
                    settled_after = time.monotonic() - stopped
                    break
                if time.monotonic() - stopped > settle_within_s:
                    break
                await asyncio.sleep(0.5)
                after, after_tasks = proc_sample(daemon.pid), await daemon.task_count()
    start = run.started
    series = [(s.t - start, s.rss_bytes / 2**20, tasks) for s, tasks in zip(samples, tasks_seen, strict=False)]
    post = [(t, mb) for t, mb, _ in series if t >= warmup]
    count = max(3, len(post) // 10)
    warm = sorted(mb for _, mb in post[:count])[len(post[:count]) // 2] if post else math.nan
    end = sorted(mb for _, mb in post[-count:])[len(post[-count:]) // 2] if post else math.nan
    rss_slope = slope([t for t, _ in post], [mb * 1024 for _, mb in post])  # KB/s
    peak_index = max(range(len(samples)), key=lambda i: samples[i].fds) if samples else 0
    return LeakReport(
        load_s=load_s, warmup_s=warmup, rate=rate, requests=run.count, outcomes=run.outcomes(),
        late_starts=run.late_starts, max_start_lag=run.max_start_lag,
        baseline=baseline, baseline_tasks=baseline_tasks, peak=samples[peak_index] if samples else baseline,
        peak_tasks=max(tasks_seen, default=baseline_tasks), rss_warm_mb=warm, rss_end_mb=end,
        rss_growth=end / warm - 1, rss_slope_kb_min=rss_slope * 60,
        trend_over_run=rss_slope * (load_s - warmup) / (warm * 1024),
        trend_per_hour=rss_slope * 3600 / (warm * 1024), settled_after_s=settled_after, after=after,
        after_tasks=after_tasks, rss_series=series)
