"""The long resilience runs: the CI scenarios of tests/resilience/, at full size.

    python -m bench.soak --soak              # 200,000 requests under mixed faults (~6 min)
    python -m bench.soak --outage            # one provider of three down for 60 s, then all of them (~2.5 min)
    python -m bench.soak --leak              # 10 minutes of steady load, then up to 60 s idle (~11 min)
    python -m bench.soak --timing            # deadlines, a silent provider, abandoned requests (~1 min)
    python -m bench.soak --all               # all four, one after the other
    python -m bench.soak --soak --requests 50000 --out /tmp/soak.json

Everything runs on 127.0.0.1: three fake providers in this process, the daemon
(`router serve`) in a subprocess. Prints each report with the issue's criteria,
writes the figures as JSON (`--out`, default bench/results/soak.json) and exits 1
if a criterion failed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/soak.py` as well as `python -m bench.soak`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.scenarios import (
    MAX_ATTEMPTS,
    AllDownReport,
    LeakReport,
    OutageReport,
    SoakReport,
    run_all_down,
    run_leak,
    run_one_down,
    run_soak,
)
from tests.support.timing import (
    DEADLINE_S,
    FIRST_BYTE_S,
    AbandonedReport,
    DeadlineReport,
    SilentReport,
    run_abandoned,
    run_deadline,
    run_silent_provider,
)

Criterion = tuple[str, bool]


def soak_criteria(r: SoakReport) -> list[Criterion]:
    reached = r.requests - len(r.never_reached)
    return [
        ("no request without exactly one outcome (anomalies)", r.outcomes.get("anomaly", 0) == 0),
        ("access log and client agree request by request", not r.mismatches and not r.never_reached_with_hits),
        ("access lines == /metrics requests == client requests that reached the daemon",
         r.access_lines == r.daemon_requests == r.histogram_count == reached),
        ("/metrics outcomes == access-log outcomes", r.metrics_by_outcome == r.access_by_outcome),
        (f"attempts per request <= bound {r.budget_bound:.4f}, none over {MAX_ATTEMPTS}",
         r.attempts_per_request <= r.budget_bound and r.max_header_attempts <= MAX_ATTEMPTS),
        ("every attempt a provider saw was counted (as an attempt or a resend)",
         r.fake_hits <= r.attempts + r.resends),
        ("upstream closed within 1 s of every disconnect", not r.unclosed and max(r.close_delays, default=0) < 1.0),
        ("no retry or failover after a disconnect unless the daemon had not read that client's close yet",
         not r.late_unexplained),
        ("no ERROR line in the daemon's log", not r.daemon_errors),
    ]


def one_down_criteria(r: OutageReport) -> list[Criterion]:
    return [
        ("the dead provider was detected", r.detection_s is not None),
        ("client success after detection >= 99.9%", r.success_after_detection >= 0.999),
        ("extra upstream attempts over the outage <= 10%",
         r.extra_attempts <= 0.10 and r.extra_attempts_metrics <= 0.10),
        ("no anomaly", r.anomalies == 0),
    ]


def all_down_criteria(r: AllDownReport) -> list[Criterion]:
    return [
        ("upstream attempts <= 1.1 x client requests after 10 s", r.attempts_per_request <= 1.1),
        ("clients get 503 with Retry-After", set(r.statuses) == {503} and r.with_retry_after == 1.0),
        ("fast: p99 latency <= 100 ms", r.latency_p99 <= 0.1),
        ("memory flat: RSS growth < 10%", r.rss_growth < 0.10),
        ("CPU flat: second half <= 1.2 x first half", r.cpu_halves[1] <= 1.2 * r.cpu_halves[0]),
        ("no anomaly", r.anomalies == 0),
    ]


def leak_criteria(r: LeakReport) -> list[Criterion]:
    return [
        ("RSS growth after warm-up < 10%", r.rss_growth < 0.10),
        ("no upward trend: fitted slope over the run < 10%", r.trend_over_run < 0.10),
        ("tasks, sockets, fds back to baseline within 60 s", r.settled_after_s is not None),
        ("no anomaly", r.outcomes.get("anomaly", 0) == 0),
    ]


def deadline_criteria(r: DeadlineReport) -> list[Criterion]:
    return [("no request without exactly one outcome", r.run.outcomes().get("anomaly", 0) == 0),
            ("the deadline ended many requests", r.outcomes["deadline_exceeded"] >= r.access_lines // 4),
            (f"no request outlives its {DEADLINE_S} s deadline by more than 100 ms (daemon)",
             max(r.overshoot_ms) <= 100)]


def silent_criteria(r: SilentReport) -> list[Criterion]:
    return [("one attempt at the silent provider, one elsewhere, per request",
             set(r.at_silent.values()) == {1} == set(r.elsewhere.values())),
            (f"latency under 1.5 x first_byte_s ({1.5 * FIRST_BYTE_S:.2f} s)", max(r.latencies) < 1.5 * FIRST_BYTE_S)]


def abandoned_criteria(r: AbandonedReport) -> list[Criterion]:
    return [("every upstream attempt closed within 1 s of its client leaving",
             not r.effects.unclosed and r.delays[-1] < 1.0),
            ("no retry or failover more than 10 ms after a client left",
             not [d for d in r.effects.late_attempts if d > 0.010])]


def show(title: str, summary: str, criteria: list[Criterion]) -> bool:
    print(f"\n== {title}\n{summary}")
    for name, ok in criteria:
        print(f"  [{'ok' if ok else 'FAILED'}] {name}")
    return all(ok for _, ok in criteria)


def as_json(report: Any) -> dict[str, Any]:
    # Not dataclasses.asdict: it rebuilds a Counter from (key, value) pairs, counting the pairs.
    data: dict[str, Any] = {f.name: _plain(getattr(report, f.name)) for f in dataclasses.fields(report)
                            if f.name != "run"}
    run = getattr(report, "run", None)
    if run is not None:  # the load's outcomes, not its every request
        data["load"] = {"requests": len(run.results), "outcomes": dict(run.outcomes()),
                        "max_loop_lag": run.max_loop_lag}
    for key in ("close_delays", "first_after", "late_attempts", "cpu_per_s", "rss_mb", "rss_series",
                "never_reached"):
        if isinstance(data.get(key), list) and len(data[key]) > 50:
            data[key] = {"count": len(data[key]), "max": max(map(_first, data[key])), "first": data[key][:5]}
    return data


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _first(value: Any) -> float:
    return value[1] if isinstance(value, list | tuple) else value


async def main_async(args: argparse.Namespace) -> int:
    main = asyncio.current_task()
    if main is not None:  # SIGTERM: unwind, so the daemon subprocess and the fake providers are stopped too
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main.cancel)
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%d %H:%M:%S"),
                           "args": {k: str(v) for k, v in vars(args).items()}}
    ok = True
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        work = Path(tmp)
        runs: list[tuple[str, Callable[[], Any], Callable[[Any], list[Criterion]]]] = []
        if args.soak or args.all:
            runs.append(("soak", lambda: run_soak(requests=args.requests, concurrency=args.concurrency,
                                                  workdir=work / "soak", max_duration_s=3600), soak_criteria))
        if args.outage or args.all:
            runs.append(("one provider down", lambda: run_one_down(outage_s=args.outage_s, rate=args.rate,
                                                                    workdir=work / "one", after_s=10.0),
                         one_down_criteria))
            runs.append(("every provider down", lambda: run_all_down(down_s=args.outage_s, rate=args.rate,
                                                                      workdir=work / "all"), all_down_criteria))
        if args.timing or args.all:
            runs.append(("deadlines", lambda: run_deadline(work / "deadline"), deadline_criteria))
            runs.append(("a silent provider", lambda: run_silent_provider(work / "silent"), silent_criteria))
            runs.append(("abandoned requests", lambda: run_abandoned(work / "gone"), abandoned_criteria))
        if args.leak or args.all:
            runs.append(("leak", lambda: run_leak(load_s=args.minutes * 60, rate=args.leak_rate,
                                                  workdir=work / "leak", sample_every_s=1.0), leak_criteria))
        for title, run, criteria in runs:
            started = time.monotonic()
            report = await run()
            passed = show(title, report.summary(), criteria(report))
            ok = ok and passed
            out[title] = {"took_s": round(time.monotonic() - started, 1), "passed": passed, **as_json(report)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1, default=str))
    print(f"\nfigures written to {args.out}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Resilience soak, outage and leak runs against the daemon.")
    parser.add_argument("--soak", action="store_true", help="mixed faults, --requests requests")
    parser.add_argument("--outage", action="store_true", help="one provider down, then all, for --outage-s")
    parser.add_argument("--leak", action="store_true", help="--minutes of steady load, then idle")
    parser.add_argument("--timing", action="store_true", help="deadlines, a silent provider, abandoned requests")
    parser.add_argument("--all", action="store_true")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--concurrency", type=int, default=128)
    parser.add_argument("--outage-s", type=float, default=60.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests/s during the outages")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--leak-rate", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "soak.json")
    args = parser.parse_args()
    if not (args.soak or args.outage or args.leak or args.timing or args.all):
        parser.error("choose --soak, --outage, --leak, --timing or --all")
    try:
        return asyncio.run(main_async(args))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted; the daemon and the fake providers were stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
