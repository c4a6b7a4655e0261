"""Benchmark: direct to the upstream vs a bare aiohttp relay vs the router, in one run.

    python bench/run.py [--duration 5] [--connections 1,16,64,256] [--rounds 3] [--out bench/results]

The router (and the bare relay) are pinned to CPU 0; wrk and the fake upstream
to CPU 1, so the relay under test owns one core. Prints and writes (JSON,
Markdown table, PNG chart): requests/s and p50/p99 latency per connection count,
added latency over direct, router CPU time per request, idle and peak RSS, time
to ready, and streaming time-to-first-byte and inter-event delay added.
wrk comes from Debian (installed when missing); without it, a Python load loop
is used and the report says so.
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
UPSTREAM_PORT, RELAY_PORT, ROUTER_PORT = 9301, 9302, 9303
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
    return subprocess.Popen(pinned(cpu, argv), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT,
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


async def _stream_timings(url: str, streams: int, max_tokens: int | None = None) -> tuple[list[float], list[float]]:
    """Time to the first event and the gaps between events of `streams` sequential streams (one
    keep-alive connection; the first stream, which also connects, is not counted)."""
    import aiohttp

    ttfb: list[float] = []
    gaps: list[float] = []
    request = {**BODY, "stream": True}
    if max_tokens is not None:
        request["max_tokens"] = max_tokens
    body = json.dumps(request).encode()
    async with aiohttp.ClientSession() as session:
        for index in range(streams + 1):
            start = time.perf_counter()
            last = None
            async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                buffer = b""
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    buffer += data
                    while b"\n\n" in buffer:
                        _, buffer = buffer.split(b"\n\n", 1)
                        if index == 0:
                            continue
                        if last is None:
                            ttfb.append((now - start) * 1000)
                        else:
                            gaps.append((now - last) * 1000)
                        last = now
    return ttfb, gaps


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load step (default 5)")
    parser.add_argument("--connections", default="1,16,64,256")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; tables show medians")
    parser.add_argument("--streams", type=int, default=90,
                        help="sequential 10-event streams per side for the inter-event gaps (default 90: a p99 "
                             "over 810 gaps; with 270, one stray gap moved it by a millisecond)")
    parser.add_argument("--ttfb-streams", type=int, default=300,
                        help="sequential one-event streams per side for the time to first event (default 300)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    connections = [int(c) for c in args.connections.split(",")]
    wrk = ensure_wrk()
    generator = "wrk" if wrk else "python (wrk unavailable)"
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                      f"wrk.body = {json.dumps(json.dumps(BODY))}\n")
    py = sys.executable
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn(1, [py, str(HERE / "upstream.py"), "--port", str(UPSTREAM_PORT)]))
        wait_http(f"http://127.0.0.1:{UPSTREAM_PORT}/v1/chat/completions", method="POST")
        relay = spawn(0, [py, str(HERE / "bare_relay.py"), "--port", str(RELAY_PORT)])
        procs.append(relay)
        wait_http(f"http://127.0.0.1:{RELAY_PORT}/v1/chat/completions", method="POST")
        spawned = time.monotonic()
        router = spawn(0, [py, "-m", "router.cli", "serve", "-c", str(HERE / "policy.yaml"),
                           "--log-level", "warning"])
        procs.append(router)
        wait_http(f"http://127.0.0.1:{ROUTER_PORT}/readyz", timeout_s=30)
        ready_s = time.monotonic() - spawned
        time.sleep(0.5)
        idle_rss = rss_mb(router.pid)
        targets = {"direct": UPSTREAM_PORT, "relay": RELAY_PORT, "router": ROUTER_PORT}
        results: dict[str, dict[int, dict[str, Any]]] = {name: {} for name in targets}
        router_cpu: dict[int, float] = {}
        relay_cpu: dict[int, float] = {}
        pids = {"router": router.pid, "relay": relay.pid}
        # Every step runs `--rounds` times, interleaved (all of direct / relay / router at every
        # connection count, then again), and the tables show medians: the shared cores are noisy.
        samples: dict[str, dict[int, list[dict[str, float]]]] = {name: {c: [] for c in connections}
                                                                 for name in targets}
        for round_index in range(args.rounds):
            for conns in connections:
                for name, port in targets.items():
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    pid = pids.get(name)
                    before = cpu_seconds(pid) if pid else 0.0
                    stats = run_wrk(url, conns, args.duration, script) if wrk \
                        else asyncio.run(_python_load(url, conns, args.duration))
                    if pid:
                        stats["cpu_ms"] = (cpu_seconds(pid) - before) / max(stats["requests"], 1) * 1000
                    samples[name][conns].append(stats)
                    print(f"round {round_index + 1} {name:7} c={conns:<4} {stats['rps']:9.0f} req/s  "
                          f"p50 {stats['p50_ms']:7.3f} ms  p99 {stats['p99_ms']:7.3f} ms  errors {stats['errors']}",
                          flush=True)
        for name in targets:
            for conns in connections:
                runs = samples[name][conns]
                results[name][conns] = {key: statistics.median(run[key] for run in runs)
                                        for key in ("rps", "p50_ms", "p99_ms")}
                results[name][conns]["requests"] = sum(run["requests"] for run in runs)
                results[name][conns]["errors"] = sum(run["errors"] for run in runs)
                results[name][conns]["rps_range"] = [min(run["rps"] for run in runs), max(run["rps"] for run in runs)]
                if name in pids:
                    (router_cpu if name == "router" else relay_cpu)[conns] = statistics.median(
                        run["cpu_ms"] for run in runs)
        peak_rss = rss_mb(router.pid, "VmHWM")
        # Interleaved rounds, so a noisy moment on the shared cores hits all three sides alike. The
        # client is a load generator: it runs on CPU 1 with the upstream, as wrk does.
        streams: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name in targets}
        rounds = args.rounds
        affinity = _on_cpu(1)
        try:
            for _ in range(rounds):
                for name, port in targets.items():
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    ttfb, _ = asyncio.run(_stream_timings(url, max(1, args.ttfb_streams // rounds), max_tokens=1))
                    _, gaps = asyncio.run(_stream_timings(url, max(1, args.streams // rounds)))
                    streams[name][0].extend(ttfb)
                    streams[name][1].extend(gaps)
        finally:
            if affinity is not None:
                os.sched_setaffinity(0, affinity)
        direct_s, relay_s, router_s = streams["direct"], streams["relay"], streams["router"]
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    summary = {
        "generator": generator, "duration_s": args.duration, "rounds": args.rounds, "results": results,
        "router_cpu_ms_per_request": router_cpu, "relay_cpu_ms_per_request": relay_cpu,
        "throughput_vs_relay": {c: results["router"][c]["rps"] / results["relay"][c]["rps"] for c in connections},
        "added_latency_ms": {c: {"p50": results["router"][c]["p50_ms"] - results["direct"][c]["p50_ms"],
                                 "p99": results["router"][c]["p99_ms"] - results["direct"][c]["p99_ms"]}
                             for c in connections},
        "router_idle_rss_mb": idle_rss, "router_peak_rss_mb": peak_rss, "router_ready_s": ready_s,
        "stream": {
            "ttfb_p50_direct_ms": statistics.median(direct_s[0]), "ttfb_p50_router_ms": statistics.median(router_s[0]),
            "ttfb_p50_added_ms": statistics.median(router_s[0]) - statistics.median(direct_s[0]),
            "ttfb_p50_relay_ms": statistics.median(relay_s[0]),
            "ttfb_p50_relay_added_ms": statistics.median(relay_s[0]) - statistics.median(direct_s[0]),
            "ttfb_streams_per_side": len(router_s[0]),
            "gap_streams_per_side": max(1, args.streams // args.rounds) * args.rounds,
            "gap_p99_direct_ms": percentile(direct_s[1], 0.99), "gap_p99_router_ms": percentile(router_s[1], 0.99),
            "gap_p99_added_ms": percentile(router_s[1], 0.99) - percentile(direct_s[1], 0.99),
        },
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    table = render_table(summary, connections)
    (out / "results.md").write_text(table)
    print(table)
    render_chart(results, connections, out / "latency.png")
    return 0


def render_table(summary: dict, connections: list[int]) -> str:
    res = summary["results"]
    lines = [f"Load generator: {summary['generator']}, {summary['duration_s']} s per step, medians of "
             f"{summary['rounds']} interleaved rounds.", "",
             "| connections | direct req/s | relay req/s | router req/s | router/relay | direct p50/p99 ms "
             "| router p50/p99 ms | added p50/p99 ms | CPU ms/req relay / router |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in connections:
        d, r, x = res["direct"][c], res["relay"][c], res["router"][c]
        added = summary["added_latency_ms"][c]
        lines.append(f"| {c} | {d['rps']:.0f} | {r['rps']:.0f} | {x['rps']:.0f} | "
                     f"{summary['throughput_vs_relay'][c]:.2f} | {d['p50_ms']:.3f} / {d['p99_ms']:.3f} | "
                     f"{x['p50_ms']:.3f} / {x['p99_ms']:.3f} | {added['p50']:.3f} / {added['p99']:.3f} | "
                     f"{summary['relay_cpu_ms_per_request'][c]:.3f} / {summary['router_cpu_ms_per_request'][c]:.3f} |")
    s = summary["stream"]
    lines += ["", f"Router RSS: {summary['router_idle_rss_mb']:.1f} MB idle, "
                  f"{summary['router_peak_rss_mb']:.1f} MB peak; ready {summary['router_ready_s']:.2f} s after start.",
              f"Streaming (50 ms-paced upstream; {s['ttfb_streams_per_side']} one-event streams per side for the "
              f"time to first event, {s['gap_streams_per_side']} ten-event streams for the gaps): TTFB p50 direct "
              f"{s['ttfb_p50_direct_ms']:.3f} ms, relay {s['ttfb_p50_relay_ms']:.3f} ms (added "
              f"{s['ttfb_p50_relay_added_ms']:.3f} ms), router "
              f"{s['ttfb_p50_router_ms']:.3f} ms (added {s['ttfb_p50_added_ms']:.3f} ms); inter-event gap p99 "
              f"direct {s['gap_p99_direct_ms']:.3f} ms, router {s['gap_p99_router_ms']:.3f} ms "
              f"(added {s['gap_p99_added_ms']:.3f} ms).", ""]
    return "\n".join(lines)


def render_chart(results: dict, connections: list[int], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no chart (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, style in (("direct", "o-"), ("relay", "s--"), ("router", "^-")):
        axes[0].plot(connections, [results[name][c]["p50_ms"] for c in connections], style, label=name)
        axes[1].plot(connections, [results[name][c]["p99_ms"] for c in connections], style, label=name)
    for ax, title in zip(axes, ("p50 latency", "p99 latency"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_xticks(connections, [str(c) for c in connections])
        ax.set_yscale("log")
        ax.set_xlabel("concurrent connections")
        ax.set_ylabel("ms")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.suptitle("Latency vs concurrency (same run, router and relay pinned to one core)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    raise SystemExit(main())
