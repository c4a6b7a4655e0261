"""Benchmark: four acceptance scenarios for the router's adaptive features, each without and with the feature.

    python bench/adaptive.py [--quick] [--scenario NAME ...] [--sequential] [--out bench/results]

Every variant gets its own fake providers (bench/adaptive_fakes.py: aiohttp apps on 127.0.0.1 in this
process, whose behaviour follows a schedule from the scenario's start) and its own router daemon
(`python -m router.cli serve` on a generated policy), and an open-loop client fires requests on a fixed
schedule whatever the answers. The variants of a scenario run side by side (`--sequential`: one after the
other); the loads are light (at most ~20 requests/s per variant).

1. adaptive: providers A (50 ms) and B (500 ms) in one tier, 20 JSON requests/s; A slows to 1 s for
   15 s, then is fast again. `strategy: weighted` vs `strategy: adaptive` (half_life_s 10, explore 5%):
   share served by A once warm, how long until most traffic leaves A and comes back, latency per phase.
2. limits: P1 (priority 0) allows 60 requests per 60 s window, P2 is the failover; 2 requests/s for 1.5
   windows. P1 without vs with `x-ratelimit-*-requests` headers on every answer: P1's 429s per client
   request, and that every request is served. A third column sends an honest Retry-After (the time to
   the window's reset) instead of `Retry-After: 1`.
3. recovery: R (priority 0) goes down for 50 s (connection refused, and in a second set answering 503),
   S (priority 1) is always fine, 10 requests/s. The old breaker defaults (max_ejection_s 30) vs the
   new defaults vs `health_probe` (GET /v1/models every 5 s): time until R serves again once it is
   back, and the client requests that still tried R while it was down. The breaker's ejections have no
   jitter, so that time depends on where the recovery falls in the ejection cycle: at 60 s, old and
   new would both be back 5.5 s after; at 50 s (20 s with --quick) old waits ~15 s, new ~5 s (the
   worst cases: ~30 s and ~10 s).
4. hedging: streams; H1 (priority 0) takes 10 s to its first event on 10% of requests (one in each ten in
   a row, at a seeded random place), 100 ms otherwise; H2 (priority 1) 200 ms; 10 streams/s. No hedge
   vs `hedge: {after_s: 1.0, max_percent: 15}`: client time to first event p50/p99, upstream attempts
   per client request.

`--quick` shortens the long phases (about 3 minutes in all instead of about 5). A variant whose policy the
router refuses (a key it does not know yet) is reported as such and the others still run. Writes
adaptive.json, adaptive.md and adaptive.png (the adaptive scenario's latency over time) to `--out`;
running some scenarios only replaces theirs in adaptive.json and adaptive.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

# Run as a script (python bench/adaptive.py) or as a module: either way the repository root is importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.adaptive_fakes import Behaviour, FakeProvider, RateWindow
from bench.adaptive_harness import (
    Sample,
    Variant,
    metric_sum,
    open_loop,
    run_variants,
    stop_all,
    targets,
)
from bench.adaptive_report import (
    _ms,
    all_answered_row,
    msec,
    ok_samples,
    pct,
    percentile,
    render_chart,
    render_markdown,
    render_table,
    row,
    secs,
    sent,
    share,
    time_to_majority,
)

HERE = Path(__file__).resolve().parent


# -- scenario 1: adaptive ----------------------------------------------------------------------------------------
async def scenario_adaptive(args: argparse.Namespace) -> dict[str, Any]:
    warm, slow, recover = (10.0, 10.0, 15.0) if args.quick else (10.0, 15.0, 20.0)
    t_slow, t_fast, end = warm, warm + slow, warm + slow + recover
    rate = 20.0

    def variant(name: str, route: dict[str, Any]) -> Variant:
        fakes = {"A": FakeProvider("A", [(0, Behaviour(0.05)), (t_slow, Behaviour(1.0)), (t_fast, Behaviour(0.05))]),
                 "B": FakeProvider("B", [(0, Behaviour(0.5))])}
        return Variant(name, name, fakes, targets("A B"), route, {})

    variants = [variant("without", {"strategy": "weighted"}),
                variant("with", {"strategy": "adaptive", "adaptive": {"half_life_s": 10, "explore_percent": 5}})]

    async def drive(v: Variant, origin: float) -> dict[str, Any]:
        return {"samples": await open_loop(v.chat_url, rate=rate, duration_s=end, origin=origin, grace_s=10)}

    raw = await run_variants(variants, drive, sequential=args.sequential)
    metrics: dict[str, dict[str, Any]] = {}
    series: dict[str, list[list[Any]]] = {}
    for name, result in raw.items():
        if "rejected" in result:
            metrics[name] = result
            continue
        samples: list[Sample] = result["samples"]
        phases = {"warm": (0, t_slow), "A slow": (t_slow, t_fast), "A fast again": (t_fast, end)}
        m: dict[str, Any] = {
            "requests": len(sent(samples)), "not_200": len(sent(samples)) - len(ok_samples(samples)),
            "share_a_warm": share(ok_samples(samples, 3.0, warm), "A"),
            "to_b_s": time_to_majority(samples, "B", t_slow, t_fast),
            "back_to_a_s": time_to_majority(samples, "A", t_fast, end),
            "share_a_slow": share(ok_samples(samples, t_slow + 5, t_fast), "A"),
            "share_a_end": share(ok_samples(samples, end - 5, end), "A")}
        for phase, (start, stop) in phases.items():
            latencies = [s.latency for s in ok_samples(samples, start, stop) if s.latency is not None]
            m[f"p50_ms {phase}"] = _ms(percentile(latencies, 0.5))
            m[f"p99_ms {phase}"] = _ms(percentile(latencies, 0.99))
        metrics[name] = m
        series[name] = [[round(s.sent, 3), round(s.latency, 4), s.provider] for s in ok_samples(samples)
                        if s.latency is not None]
    rows = [
        row("share served by A once warm (s 3-10)", metrics, "share_a_warm", pct, "≥ 90%", lambda v: v >= 0.9),
        row("A slow: most traffic on B after", metrics, "to_b_s", secs, "≤ 5 s", lambda v: v <= 5),
        row("A fast again: most traffic back on A after", metrics, "back_to_a_s", secs, "≤ 15 s", lambda v: v <= 15),
        row("share served by A while slow, from 5 s in", metrics, "share_a_slow", pct),
        row("share served by A in the last 5 s", metrics, "share_a_end", pct),
        *(row(f"latency {q}, {phase}", metrics, f"{q}_ms {phase}", msec)
          for phase in ("warm", "A slow", "A fast again") for q in ("p50", "p99")),
        row("client requests not answered 200", metrics, "not_200", str, "0", lambda v: v == 0,
            judged=("without", "with")),
    ]
    return {"title": "1. Adaptive routing inside a tier", "labels": {v.name: v.label for v in variants},
            "about": f"A 50 ms and B 500 ms in one tier, {rate:g} JSON requests/s open loop; A answers in 1 s "
                     f"from s {t_slow:g} to s {t_fast:g}, then 50 ms again until s {end:g}. Without: "
                     "`strategy: weighted` (equal weights); with: `strategy: adaptive`, "
                     "`adaptive: {half_life_s: 10, explore_percent: 5}`. \"Most traffic\": over 50% of the requests "
                     "sent in the trailing 1 s, for 3 s in a row.",
            "params": {"warm_s": warm, "slow_s": slow, "recover_s": recover, "rate": rate},
            "variants": metrics, "rows": rows, "series": series}


# -- scenario 2: provider limit headers --------------------------------------------------------------------------
async def scenario_limits(args: argparse.Namespace) -> dict[str, Any]:
    window = 30.0 if args.quick else 60.0
    limit, rate, duration = round(window), 2.0, 1.5 * window

    def variant(name: str, label: str, announce: bool, retry_after: int | None) -> Variant:
        fakes = {"P1": FakeProvider("P1", [(0, Behaviour(0.02))],
                                    limit=RateWindow(limit, window, announce=announce, retry_after_s=retry_after)),
                 "P2": FakeProvider("P2", [(0, Behaviour(0.02))])}
        return Variant(name, label, fakes, targets("P1", "P2"),
                       {"retry": {"max_attempts": 3, "wait_for_preferred_s": 0}}, {})

    variants = [variant("without", "without", False, 1),
                variant("without_honest", "without, Retry-After to reset", False, None),
                variant("with", "with", True, 1)]

    async def drive(v: Variant, origin: float) -> dict[str, Any]:
        return {"samples": await open_loop(v.chat_url, rate=rate, duration_s=duration, origin=origin, grace_s=10),
                "p1": v.fakes["P1"], "p2": v.fakes["P2"]}

    raw = await run_variants(variants, drive, sequential=args.sequential)
    metrics: dict[str, dict[str, Any]] = {}
    for name, result in raw.items():
        if "rejected" in result:
            metrics[name] = result
            continue
        samples, p1, p2 = sent(result["samples"]), result["p1"], result["p2"]
        answered = ok_samples(samples)
        after_reset = ok_samples(samples, window + 0.5, duration)
        metrics[name] = {"requests": len(samples), "answered_200": len(answered),
                         "p1_429": len(p1.chat_records(429)),
                         "p1_429_share": len(p1.chat_records(429)) / max(len(samples), 1),
                         "served_p1": share(answered, "P1"), "served_p2": share(answered, "P2"),
                         "p1_after_reset": share(after_reset, "P1"), "p2_received": len(p2.chat_records())}
    rows = [
        row("P1 429s / client requests", metrics, "p1_429_share", pct, "≤ 2%", lambda v: v <= 0.02),
        row("P1 429s", metrics, "p1_429", str),
        all_answered_row(metrics, judged=("without", "without_honest", "with")),
        row("served by P1", metrics, "served_p1", pct),
        row("served by P1 after its first window reset", metrics, "p1_after_reset", pct),
    ]
    return {"title": "2. Provider rate-limit headers", "labels": {v.name: v.label for v in variants},
            "about": f"P1 (priority 0) admits {limit} requests per fixed {window:g} s window (then 429 + "
                     f"Retry-After), P2 (priority 1) is the failover; {rate:g} requests/s for {duration:g} s; route "
                     "`retry: {max_attempts: 3, wait_for_preferred_s: 0}`. Without: P1 sends no `x-ratelimit-*` "
                     "headers and `Retry-After: 1` on its 429s; \"without, Retry-After to reset\": the same with an "
                     "honest Retry-After (the seconds until the window resets); with: `x-ratelimit-limit-requests`, "
                     "`-remaining-requests`, `-reset-requests` (Go durations) on every answer, `Retry-After: 1`.",
            "params": {"limit": limit, "window_s": window, "rate": rate, "duration_s": duration},
            "variants": metrics, "rows": rows}


# -- scenario 3: recovery after a long outage ----------------------------------------------------------------------
async def scenario_recovery(args: argparse.Namespace) -> dict[str, Any]:
    # Ejections last 5, 10, 20, 30, 30 ... s (old) or 5, 10, 10 ... s (new) from ~0.5 s into the outage: after
    # 60 s (or 30 s) both would end 5.5 s after the recovery. 50 s (20 s) falls mid-cycle: ~15 s vs ~5 s.
    warm, outage, after = (5.0, 20.0, 35.0) if args.quick else (5.0, 50.0, 40.0)
    t_down, t_up, end = warm, warm + outage, warm + outage + after
    rate = 10.0
    configs: dict[str, dict[str, Any]] = {
        "old": {"breaker": {"consecutive_failures": 5, "base_ejection_s": 5, "max_ejection_s": 30}},
        "new": {},
        "probes": {"health_probe": {"interval_s": 5, "path": "/models"}}}
    downs = {"refused": Behaviour(0.02, up=False), "503": Behaviour(0.02, status=503)}
    variants = [Variant(f"{config}/{kind}", f"{config}, {kind}",
                        {"R": FakeProvider("R", [(0, Behaviour(0.02)), (t_down, down), (t_up, Behaviour(0.02))]),
                         "S": FakeProvider("S", [(0, Behaviour(0.02))])},
                        targets("R", "S"), {}, {"R": extra})
                for kind, down in downs.items() for config, extra in configs.items()]

    async def drive(v: Variant, origin: float) -> dict[str, Any]:
        samples = await open_loop(v.chat_url, rate=rate, duration_s=end, origin=origin, grace_s=10)
        assert v.daemon is not None
        return {"samples": samples, "r": v.fakes["R"], "metrics": await v.daemon.metrics()}

    raw = await run_variants(variants, drive, sequential=args.sequential)
    metrics: dict[str, dict[str, Any]] = {}
    for name, result in raw.items():
        if "rejected" in result:
            metrics[name] = result
            continue
        samples, r, scraped = sent(result["samples"]), result["r"], result["metrics"]
        back = [rec.t - t_up for rec in r.chat_records(200) if rec.t >= t_up]
        during = [s for s in samples if t_down <= s.sent < t_up]
        tried_r = [s for s in during if (s.attempts or 1) >= 2 or s.provider == "R"]
        skipped = [s.sent for s in during if s.attempts == 1 and s.provider == "S"]
        first_skip = min(skipped) if skipped else t_up
        metrics[name] = {
            "requests": len(samples), "answered_200": len(ok_samples(samples)),
            "back_s": min(back) if back else None, "after_s": after,
            "tried_r": len(tried_r), "tried_r_after_skip": sum(s.sent > first_skip for s in tried_r),
            "first_skip_s": round(first_skip - t_down, 2),
            "r_failed_attempts": metric_sum(scraped, "llm_router_upstream_attempts_total",
                                            lambda labels: labels.get("provider") == "R"
                                            and labels.get("outcome") != "ok"),
            "r_ejections": metric_sum(scraped, "llm_router_breaker_ejections_total",
                                      lambda labels: labels.get("provider") == "R"),
            "r_chat_during_outage": sum(t_down <= rec.t < t_up for rec in r.chat_records()),
            "r_probes": len([rec for rec in r.records if rec.path == "models"])}
    new_like = tuple(v.name for v in variants if not v.name.startswith("old"))
    probes = tuple(v.name for v in variants if v.name.startswith("probes"))
    rows = [
        row("R serves again, after it is back", metrics, "back_s", lambda v: secs(v, f"> {after:g} s"), "≤ 10 s",
            lambda v: v <= 10, judged=new_like),
        row("client requests that tried R while it was down", metrics, "tried_r", str),
        row("… after R was first skipped (ejected)", metrics, "tried_r_after_skip", str, "0 (probes)",
            lambda v: v == 0, judged=probes),
        row("failed attempts on R (router /metrics)", metrics, "r_failed_attempts", lambda v: f"{v:g}"),
        row("chat requests R received while down (503 only)", metrics, "r_chat_during_outage", str),
        row("R ejections (router /metrics)", metrics, "r_ejections", lambda v: f"{v:g}"),
        row("GET /v1/models R received (probes)", metrics, "r_probes", str),
        all_answered_row(metrics, judged=tuple(v.name for v in variants)),
    ]
    return {"title": "3. Recovery after a long outage", "labels": {v.name: v.label for v in variants},
            "about": f"R (priority 0) and S (priority 1), {rate:g} JSON requests/s; R is down from s {t_down:g} to "
                     f"s {t_up:g} ({outage:g} s: listener closed, i.e. connection refused; or answering 503), then "
                     f"up until s {end:g}. old: `breaker: {{consecutive_failures: 5, base_ejection_s: 5, "
                     "max_ejection_s: 30}` on R (the old defaults); new: no breaker block (the defaults); probes: "
                     "`health_probe: {interval_s: 5, path: /models}` on R. A client request \"tried R\" when its "
                     "answer says `x-router-attempts` ≥ 2; \"first skipped\": the first request of the outage "
                     "served by S in one attempt.",
            "params": {"warm_s": warm, "outage_s": outage, "after_s": after, "rate": rate},
            "variants": metrics, "rows": rows}


# -- scenario 4: hedged streams ------------------------------------------------------------------------------------
async def scenario_hedging(args: argparse.Namespace) -> dict[str, Any]:
    duration, rate = (15.0 if args.quick else 30.0), 10.0

    def variant(name: str, route: dict[str, Any]) -> Variant:
        fakes = {"H1": FakeProvider("H1", [(0, Behaviour(0.1, slow_fraction=0.1, slow_latency_s=10.0))], seed=7),
                 "H2": FakeProvider("H2", [(0, Behaviour(0.2))])}
        return Variant(name, name, fakes, targets("H1", "H2"), route, {})

    variants = [variant("without", {}), variant("with", {"hedge": {"after_s": 1.0, "max_percent": 15}})]

    async def drive(v: Variant, origin: float) -> dict[str, Any]:
        samples = await open_loop(v.chat_url, rate=rate, duration_s=duration, origin=origin, stream=True,
                                  grace_s=15)
        return {"samples": samples, "h1": v.fakes["H1"], "h2": v.fakes["H2"]}

    raw = await run_variants(variants, drive, sequential=args.sequential)
    metrics: dict[str, dict[str, Any]] = {}
    for name, result in raw.items():
        if "rejected" in result:
            metrics[name] = result
            continue
        samples, h1, h2 = sent(result["samples"]), result["h1"], result["h2"]
        ttfe = [s.ttfe for s in samples if s.ttfe is not None]
        upstream = len(h1.chat_records()) + len(h2.chat_records())
        metrics[name] = {"requests": len(samples), "answered_200": sum(s.complete for s in samples),
                         "ttfe_p50_s": percentile(ttfe, 0.5), "ttfe_p99_s": percentile(ttfe, 0.99),
                         "ttfe_max_s": max(ttfe, default=None), "no_first_event": len(samples) - len(ttfe),
                         "attempts_ratio": upstream / max(len(samples), 1),
                         "h1_slow": sum(rec.slow for rec in h1.chat_records()),
                         "served_h2": share([s for s in samples if s.status == 200], "H2")}
    rows = [
        row("time to first event, p50", metrics, "ttfe_p50_s", secs),
        row("time to first event, p99", metrics, "ttfe_p99_s", secs, "≤ 1.5 s", lambda v: v <= 1.5),
        row("time to first event, max", metrics, "ttfe_max_s", secs),
        row("upstream attempts / client requests", metrics, "attempts_ratio", lambda v: f"{v:.3f}", "≤ 1.12",
            lambda v: v <= 1.12),
        row("H1 requests that drew the 10 s first event", metrics, "h1_slow", str),
        row("served by H2", metrics, "served_h2", pct),
        all_answered_row(metrics, judged=("without", "with"), what="streams complete ([DONE])"),
    ]
    return {"title": "4. Hedged streams", "labels": {v.name: v.label for v in variants},
            "about": "H1 (priority 0): first event after 10 s on 10% of streams (one in each ten in a row, at a "
                     "seeded random place), 100 ms otherwise "
                     f"(response headers at once); H2 (priority 1): 200 ms. {rate:g} streams/s for {duration:g} s, "
                     "each read to its end. Without: no hedge; with: `hedge: {after_s: 1.0, max_percent: 15}`. "
                     "Upstream attempts: chat requests both fakes received.",
            "params": {"duration_s": duration, "rate": rate},
            "variants": metrics, "rows": rows}


SCENARIOS: dict[str, Callable[[argparse.Namespace], Awaitable[dict[str, Any]]]] = {
    "adaptive": scenario_adaptive, "limits": scenario_limits, "recovery": scenario_recovery,
    "hedging": scenario_hedging}


# -- main ------------------------------------------------------------------------------------------------------
async def run_all(names: Sequence[str], args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    results = {}
    for name in names:
        print(f"scenario {name}{' (quick)' if args.quick else ''} ...", flush=True)
        started = time.monotonic()
        result = await SCENARIOS[name](args)
        result.update(run_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), quick=args.quick,
                      wall_s=round(time.monotonic() - started, 1))
        results[name] = result
        print(f"\n## {result['title']} ({result['wall_s']:g} s)\n\n{render_table(result)}\n", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", action="append", choices=list(SCENARIOS),
                        help="run this scenario (repeatable; default: all four)")
    parser.add_argument("--quick", action="store_true", help="shorter phases (about 3 minutes in all)")
    parser.add_argument("--sequential", action="store_true", help="run a scenario's variants one after the other")
    parser.add_argument("--out", default=str(HERE / "results"), help="directory for adaptive.{json,md,png}")
    args = parser.parse_args()
    names = list(dict.fromkeys(args.scenario or SCENARIOS))
    try:
        results = asyncio.run(run_all(names, args))
    except KeyboardInterrupt:
        print("interrupted: nothing written", file=sys.stderr)
        return 130
    finally:
        stop_all()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "adaptive.json"
    doc: dict[str, Any] = {"scenarios": {}}
    if json_path.exists():  # keep the scenarios not run this time
        with contextlib.suppress(ValueError):
            doc = json.loads(json_path.read_text())
    doc["scenarios"].update(results)
    json_path.write_text(json.dumps(doc, indent=1, default=str))
    (out / "adaptive.md").write_text(render_markdown(doc))
    written = [json_path, out / "adaptive.md"]
    if "adaptive" in results and render_chart(results["adaptive"], out / "adaptive.png"):
        written.append(out / "adaptive.png")
    print("results written to " + ", ".join(str(p) for p in written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
