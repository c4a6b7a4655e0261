"""Benchmark: direct to the upstream vs two bare aiohttp relays vs the router, in one run.

    python bench/run.py [--duration 5] [--connections 1,16,64,256] [--rounds 3] [--out bench/results]

The relays and the router take turns on CPU 0; wrk, the fake upstream and the streaming
clients run on CPU 1, so the side under test owns one core. Two references: the bare aiohttp
relay on asyncio's event loop, and the same relay on uvloop (the fastest Python relay a user
could write in an afternoon). Every step runs `--rounds` times, interleaved (each side at each
step, then again), and the tables show medians and the spread over rounds.

- JSON: requests/s, p50/p99 and CPU per request at 1, 16, 64, 256 connections (wrk).
- Streams (wrk reads each stream to its end): instant 21-event streams (~5 KB, one upstream
  write) at 16 and 64 connections, a 2,000-event answer, and 32 KB / 256 KB prompts as JSON and
  as streams: streams/s and CPU per stream and per event.
- A crowd of paced streams: 1,000 at once, 50 events 20 ms apart: CPU per event and the p99 gap
  between events as the clients saw it.
- The time to the first event of an instant stream, one client, sequential.
- The router's idle and peak RSS and its time from spawn to /readyz.

Writes results.json, results.md and two charts (latency.png, streams.png). wrk comes from Debian
(installed when missing); without it, a Python load loop is used and the report says so.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
UPSTREAM_PORT, RELAY_PORT, ROUTER_PORT, UVLOOP_RELAY_PORT = 9301, 9302, 9303, 9304
BODY = {"model": "bench", "messages": [{"role": "user", "content": "Explain quantum computing in one paragraph."}],
        "max_tokens": 250, "temperature": 0.7}
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def ensure_wrk() -> str | None:
    if shutil.which("wrk"):
        return "wrk"
    if shutil.which("apt-get") and os.geteuid() == 0:
        subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, check=False)
        if not shutil.which("wrk"):
            subprocess.run(["apt-get", "update", "-qq"], stdout=subprocess.DEVNULL, check=False)
            subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
    return "wrk" if shutil.which("wrk") else None


def pinned(cpu: int, argv: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *argv] if shutil.which("taskset") and os.cpu_count() and os.cpu_count() > 1 \
        else argv


def spawn(cpu: int, argv: list[str]) -> subprocess.Popen[bytes]:
    """Start a process pinned to `cpu`; its stderr goes to a file in the temp directory (a pipe nobody
    reads fills up and blocks a process that logs, and a relay logs every connection wrk drops)."""
    with tempfile.NamedTemporaryFile(prefix=f"bench-{Path(argv[1]).stem}-", suffix=".log", delete=False) as log:
        return subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT,
                                start_new_session=True)


def wait_http(url: str, timeout_s: float = 15.0, method: str = "GET") -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        try:
            data = json.dumps(BODY).encode() if method == "POST" else None
            req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.01)
    raise RuntimeError(f"{url} did not become ready")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not match:
        raise ValueError(text)
    return float(match.group(1)) * _UNITS[match.group(2)]


def run_wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                                    "-s", str(script), url]), capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50_ms": p50, "p99_ms": p99, "requests": total,
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


async def _python_load(url: str, connections: int, duration: int) -> dict[str, float]:
    import aiohttp

    latencies: list[float] = []
    deadline = time.monotonic() + duration
    body = json.dumps(BODY).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async def worker() -> None:
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    await resp.read()
                latencies.append((time.perf_counter() - start) * 1000)
        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return {"rps": len(latencies) / duration, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)], "requests": len(latencies), "errors": 0}


def _on_cpu(cpu: int) -> set[int] | None:
    """Pin this process (the streaming client, a load generator) to `cpu`; returns the old affinity."""
    if not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) < 2:
        return None
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return previous


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


# The streaming steps (wrk reads each stream to its end): name, model, stream, prompt bytes, connections,
# events per stream (0: a JSON answer).
STREAM_STEPS: list[tuple[str, str, bool, int, int, int]] = [
    ("instant 21 events, 16 conns", "instant-21", True, 0, 16, 21),
    ("instant 21 events, 64 conns", "instant-21", True, 0, 64, 21),
    ("2,000 events, 16 conns", "instant-2000", True, 0, 16, 2000),
    ("32 KB prompt, JSON, 16 conns", "bench", False, 32 * 1024, 16, 0),
    ("256 KB prompt, JSON, 16 conns", "bench", False, 256 * 1024, 16, 0),
    ("32 KB prompt, stream, 16 conns", "instant-21", True, 32 * 1024, 16, 21),
    ("256 KB prompt, stream, 16 conns", "instant-21", True, 256 * 1024, 16, 21),
]
CROWD_MODEL, CROWD_EVENTS = "paced-50-100", 50
SIDES = ("direct", "relay", "relay_uvloop", "router")  # the last three take turns on CPU 0


def _raise_file_limit() -> None:
    """The crowd opens a thousand connections per side; the processes started here inherit the limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 8192:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8192, hard), hard))


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per wrk step (default 5)")
    parser.add_argument("--connections", default="1,16,64,256", help="JSON steps")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; tables show medians")
    parser.add_argument("--crowd", type=int, default=1000, help="paced streams at once (default 1000)")
    parser.add_argument("--ttfb-streams", type=int, default=300,
                        help="sequential instant streams per side for the time to first event (default 300)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    from report import render_charts, render_table
    from streams import instant_ttfb, paced_crowd, request_body, wrk_script

    _raise_file_limit()
    connections = [int(c) for c in args.connections.split(",")]
    wrk = ensure_wrk()
    if wrk is None:
        print("wrk is not available: the streaming steps need it; JSON steps use a Python load loop")
    generator = "wrk" if wrk else "python (wrk unavailable)"
    scripts_dir = Path(tempfile.mkdtemp())
    json_script = wrk_script(scripts_dir, "json", BODY)
    step_scripts = {name: wrk_script(scripts_dir, f"step{index}", request_body(model, stream=stream,
                                                                               prompt_bytes=prompt))
                    for index, (name, model, stream, prompt, _, _) in enumerate(STREAM_STEPS)}
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    ports = {"direct": UPSTREAM_PORT, "relay": RELAY_PORT, "relay_uvloop": UVLOOP_RELAY_PORT, "router": ROUTER_PORT}
    samples: dict[str, Any] = {"json": {c: {s: [] for s in SIDES} for c in connections},
                               "streams": {name: {s: [] for s in SIDES} for name, *_ in STREAM_STEPS},
                               "crowd": {s: [] for s in SIDES}, "ttfb": {s: [] for s in SIDES}}
    try:
        procs.append(spawn(1, [py, str(HERE / "upstream.py"), "--port", str(UPSTREAM_PORT)]))
        wait_http(f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions", method="POST")
        relay = spawn(0, [py, str(HERE / "bare_relay.py"), "--port", str(RELAY_PORT)])
        uv_relay = spawn(0, [py, str(HERE / "bare_relay.py"), "--port", str(UVLOOP_RELAY_PORT), "--uvloop"])
        procs += [relay, uv_relay]
        for port in (RELAY_PORT, UVLOOP_RELAY_PORT):
            wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", method="POST")
        spawned = time.monotonic()
        router = spawn(0, [py, "-m", "router.cli", "serve", "-c", str(HERE / "policy.yaml"), "--log-level", "warning"])
        procs.append(router)
        wait_http(f"http://127.0.0.1:{ROUTER_PORT}/readyz", timeout_s=30)
        ready_s = time.monotonic() - spawned
        time.sleep(0.5)
        idle_rss = rss_mb(router.pid)
        pids = {"relay": relay.pid, "relay_uvloop": uv_relay.pid, "router": router.pid}

        def measured(side: str, run: Any) -> tuple[Any, float]:
            """Run a step against one side; its result and the side's CPU seconds meanwhile."""
            pid = pids.get(side)
            before = cpu_seconds(pid) if pid else 0.0
            result = run()
            return result, (cpu_seconds(pid) - before if pid else 0.0)

        for round_index in range(args.rounds):
            order = SIDES if round_index % 2 == 0 else tuple(reversed(SIDES))
            for conns in connections:
                for side in order:
                    url = f"http://127.0.0.1:{ports[side]}/v1/chat/completions"
                    stats, cpu = measured(side, lambda u=url, c=conns: run_wrk(u, c, args.duration, json_script)
                                          if wrk else asyncio.run(_python_load(u, c, args.duration)))
                    stats["cpu_ms"] = cpu / max(stats["requests"], 1) * 1000
                    samples["json"][conns][side].append(stats)
                    print(f"round {round_index + 1} JSON {side:12} c={conns:<4} {stats['rps']:9.0f} req/s  "
                          f"p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms  CPU "
                          f"{stats['cpu_ms']:.3f} ms/req  errors {stats['errors']}", flush=True)
            if wrk:
                for name, _, _, _, conns, events in STREAM_STEPS:
                    for side in order:
                        url = f"http://127.0.0.1:{ports[side]}/v1/chat/completions"
                        stats, cpu = measured(side, lambda u=url, c=conns, n=name: run_wrk(
                            u, c, args.duration, step_scripts[n]))
                        stats["cpu_ms"] = cpu / max(stats["requests"], 1) * 1000
                        stats["cpu_us_per_event"] = stats["cpu_ms"] * 1000 / events if events else None
                        samples["streams"][name][side].append(stats)
                        print(f"round {round_index + 1} {name:32} {side:12} {stats['rps']:8.0f}/s  CPU "
                              f"{stats['cpu_ms']:.3f} ms  errors {stats['errors']}", flush=True)
            affinity = _on_cpu(1)  # the clients are load generators: CPU 1, like wrk
            try:
                for side in order:
                    crowd, cpu = measured(side, lambda s=side: asyncio.run(paced_crowd(
                        ports[s], streams=args.crowd, model=CROWD_MODEL, waves=1, timeout_s=60)))
                    gaps = crowd.gaps_ms
                    samples["crowd"][side].append({
                        "streams": crowd.streams, "failed": crowd.failed, "events": crowd.events,
                        "cpu_us_per_event": cpu * 1e6 / max(crowd.events, 1),
                        "gap_p50_ms": percentile(gaps, 0.5) if gaps else float("nan"),
                        "gap_p99_ms": percentile(gaps, 0.99) if gaps else float("nan")})
                    print(f"round {round_index + 1} crowd {side:12} {crowd.streams} streams ({crowd.failed} failed), "
                          f"{crowd.events} events, CPU {samples['crowd'][side][-1]['cpu_us_per_event']:.1f} "
                          f"µs/event, gap p99 {samples['crowd'][side][-1]['gap_p99_ms']:.2f} ms", flush=True)
                    samples["ttfb"][side] += asyncio.run(instant_ttfb(ports[side],
                                                                      max(1, args.ttfb_streams // args.rounds)))
            finally:
                if affinity is not None:
                    os.sched_setaffinity(0, affinity)
        peak_rss = rss_mb(router.pid, "VmHWM")
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    summary = summarize(samples, connections, generator=generator, duration=args.duration, rounds=args.rounds,
                        crowd_streams=args.crowd, idle_rss=idle_rss, peak_rss=peak_rss, ready_s=ready_s)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = render_table(summary)
    (out / "results.md").write_text(table)
    print(table)
    render_charts(summary, out)
    return 0


def summarize(samples: dict[str, Any], connections: list[int], **facts: Any) -> dict[str, Any]:
    """Medians and spreads per side and step, and the router's ratios to each relay, round by round."""
    def ratios(runs: dict[str, list[dict[str, float]]], key: str = "rps") -> dict[str, dict[str, float]]:
        router = [run[key] for run in runs["router"]]
        return {ref: _spread([r / x[key] for r, x in zip(router, runs[ref], strict=True)])
                for ref in ("relay", "relay_uvloop")}

    json_steps = {}
    for conns in connections:
        runs = samples["json"][conns]
        json_steps[conns] = {
            side: {"rps": _spread([r["rps"] for r in runs[side]]),
                   "p50_ms": statistics.median(r["p50_ms"] for r in runs[side]),
                   "p99_ms": statistics.median(r["p99_ms"] for r in runs[side]),
                   "cpu_ms": statistics.median(r["cpu_ms"] for r in runs[side]),
                   "requests": sum(r["requests"] for r in runs[side]), "errors": sum(r["errors"] for r in runs[side])}
            for side in SIDES}
        json_steps[conns]["router_vs"] = ratios(runs)
    stream_steps = {}
    for name, *_ in STREAM_STEPS:
        runs = samples["streams"][name]
        if not runs["router"]:
            continue
        stream_steps[name] = {
            side: {"rps": _spread([r["rps"] for r in runs[side]]),
                   "cpu_ms": statistics.median(r["cpu_ms"] for r in runs[side]),
                   "cpu_us_per_event": statistics.median(r["cpu_us_per_event"] for r in runs[side])
                   if runs[side][0]["cpu_us_per_event"] is not None else None,
                   "errors": sum(r["errors"] for r in runs[side])}
            for side in SIDES}
        stream_steps[name]["router_vs"] = ratios(runs)
    crowd = {side: {key: statistics.median(run[key] for run in samples["crowd"][side])
                    for key in ("cpu_us_per_event", "gap_p50_ms", "gap_p99_ms")}
             | {"failed": sum(run["failed"] for run in samples["crowd"][side]),
                "streams": sum(run["streams"] for run in samples["crowd"][side])} for side in SIDES}
    for side in SIDES:
        crowd[side]["gap_p99_added_ms"] = crowd[side]["gap_p99_ms"] - crowd["direct"]["gap_p99_ms"]
    crowd["router_cpu_vs"] = {ref: _spread([r["cpu_us_per_event"] / x["cpu_us_per_event"] for r, x in zip(
        samples["crowd"]["router"], samples["crowd"][ref], strict=True)]) for ref in ("relay", "relay_uvloop")}
    ttfb = {side: statistics.median(samples["ttfb"][side]) for side in SIDES}
    return {**facts, "connections": connections, "json": json_steps, "streams": stream_steps,
            "crowd": crowd, "crowd_model": CROWD_MODEL,
            "ttfb_ms": ttfb, "ttfb_added_ms": {side: ttfb[side] - ttfb["direct"] for side in SIDES},
            "ttfb_streams_per_side": len(samples["ttfb"]["router"])}


if __name__ == "__main__":
    raise SystemExit(main())
