"""Benchmark of scale-out: the Redis state backend's cost, and `serve --workers 2` vs 1, in one run.

    python bench/scaleout.py [--duration 5] [--rounds 3] [--out bench/results]

(a) Redis cost: the daemon pinned to CPU 0 with one client whose limits
    (requests and tokens) are far above the load, so every request is admitted
    and pays for the limit check: `state.backend: memory` vs `redis` (a
    redis-server this script starts on loopback, pinned to CPU 1 with wrk and the
    fake upstream), and `redis` with a requests limit only (no token limit, so no
    background write to settle tokens with `usage`). wrk at 1 and 64 connections:
    req/s, p50/p99, router and redis-server CPU time per request, non-2xx
    answers, state backend errors.
(b) Workers: `router serve --workers 1` vs `--workers 2` at 64 connections,
    the router not pinned (the workers may use every core), memory backend.

Reuses bench/run.py's machinery (wrk, CPU pinning, /proc accounting, the fast
fake upstream bench/upstream.py). Every process it starts is stopped at the end;
every step is bounded in time. Every configuration runs `--rounds` times,
interleaved, and the tables show medians (this VM is shared and noisy). Writes
bench/results/scaleout.{json,md}.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from run import BODY, HERE, ROOT, _ms, cpu_seconds, ensure_wrk, pinned, spawn, wait_http

CLIENT_KEY = "bench-client-key"
CLIENT_ENV = "BENCH_CLIENT_KEY"
HEADERS = {"Content-Type": "application/json", "Authorization": f"Bearer {CLIENT_KEY}"}
# Far above anything this machine can serve: the limit is checked on every request, never refuses.
LIMITS = {"requests_per_second": 1_000_000, "burst": 1_000_000, "tokens_per_minute": 1_000_000_000}
REQUESTS_ONLY = {"requests_per_second": 1_000_000, "burst": 1_000_000}
STEP_GRACE_S = 30  # a wrk step may take this much longer than its duration before it counts as hung


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def policy(upstream_port: int, router_port: int, state: dict[str, Any], limits: dict[str, Any]) -> str:
    data = {
        "version": 1,
        "providers": {"upstream": {"base_url": f"http://127.0.0.1:{upstream_port}/v1", "max_connections": 1000}},
        "routes": {"bench": {"targets": [{"provider": "upstream", "model": "bench-model"}]}},
        "clients": [{"name": "bench", "key_env": CLIENT_ENV, "limits": limits}],
        "state": state,
        "server": {"host": "127.0.0.1", "port": router_port},
    }
    return json.dumps(data, indent=2)  # JSON is YAML


def wrk_script(directory: Path) -> Path:
    path = directory / "post.lua"
    lines = ['wrk.method = "POST"'] + [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in HEADERS.items()]
    lines.append(f"wrk.body = {json.dumps(json.dumps(BODY))}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_wrk(url: str, connections: int, duration: int, script: Path) -> dict[str, float]:
    """bench/run.py's wrk step, with a time bound on the wrk process."""
    out = subprocess.run(pinned(1, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s",
                                    str(script), url]),
                         capture_output=True, text=True, check=True, timeout=duration + STEP_GRACE_S).stdout

    def find(pattern: str) -> str:
        match = re.search(pattern, out)
        if match is None:
            raise RuntimeError(f"unexpected wrk output:\n{out}")
        return match.group(1)

    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": float(find(r"Requests/sec:\s+([\d.]+)")), "p50_ms": _ms(find(r"\s50%\s+(\S+)")),
            "p99_ms": _ms(find(r"\s99%\s+(\S+)")), "requests": int(find(r"(\d+) requests in")),
            "errors": errors + (int(non2xx.group(1)) if non2xx else 0)}


async def _python_load(url: str, connections: int, duration: int) -> dict[str, float]:
    """Without wrk: a closed loop of `connections` aiohttp clients (bench/run.py's, with the client key)."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    deadline = time.monotonic() + duration
    body = json.dumps(BODY).encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                     timeout=aiohttp.ClientTimeout(total=STEP_GRACE_S)) as session:
        async def worker() -> None:
            nonlocal errors
            while time.monotonic() < deadline:
                start = time.perf_counter()
                async with session.post(url, data=body, headers=HEADERS) as resp:
                    await resp.read()
                    errors += resp.status != 200
                latencies.append((time.perf_counter() - start) * 1000)
        await asyncio.gather(*(worker() for _ in range(connections)))
    latencies.sort()
    return {"rps": len(latencies) / duration, "p50_ms": latencies[len(latencies) // 2],
            "p99_ms": latencies[int(len(latencies) * 0.99)], "requests": len(latencies), "errors": errors}


def load(url: str, connections: int, duration: int, script: Path, wrk: bool) -> dict[str, float]:
    return run_wrk(url, connections, duration, script) if wrk \
        else asyncio.run(asyncio.wait_for(_python_load(url, connections, duration), duration + STEP_GRACE_S))


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process (a supervisor forwards it to its workers), then SIGKILL its group after 10 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return str(resp.read().decode())


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@contextmanager
def router(policy_path: Path, port: int, *, cpu: int | None, workers: int = 1) -> Iterator[list[int]]:
    """The daemon until it and (with --workers) every worker answer; yields the pids doing the work."""
    argv = [sys.executable, "-m", "router.cli", "serve", "-c", str(policy_path), "--log-level", "warning"]
    if workers > 1:
        argv += ["--workers", str(workers)]
    env = {**os.environ, CLIENT_ENV: CLIENT_KEY}
    log = policy_path.with_suffix(".err")
    with log.open("wb") as stderr:
        proc = subprocess.Popen(pinned(cpu, argv) if cpu is not None else argv, stdout=subprocess.DEVNULL,
                                stderr=stderr, cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", timeout_s=30)
        pids = [proc.pid]
        if workers > 1:
            deadline = time.monotonic() + 30
            while len(set(re.findall(r'worker="(\d+)"', metrics(port)))) < workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"not all {workers} workers answered")
                time.sleep(0.1)
            pids = children(proc.pid)
        yield pids
    finally:
        stop(proc)
        if proc.returncode != 0:
            print(f"router exited with {proc.returncode}:\n{log.read_text(errors='replace')[-2000:]}",
                  file=sys.stderr)


def measure(url: str, port: int, pids: list[int], connections: int, duration: int, script: Path, wrk: bool,
            redis_pid: int | None = None) -> dict[str, float]:
    before = sum(cpu_seconds(pid) for pid in pids)
    redis_before = cpu_seconds(redis_pid) if redis_pid else 0.0
    stats = load(url, connections, duration, script, wrk)
    requests = max(stats["requests"], 1)
    stats["router_cpu_ms_per_request"] = (sum(cpu_seconds(pid) for pid in pids) - before) / requests * 1000
    if redis_pid:
        stats["redis_cpu_ms_per_request"] = (cpu_seconds(redis_pid) - redis_before) / requests * 1000
    stats["backend_errors"] = metric_sum(metrics(port), "llm_router_state_backend_errors_total")
    return stats


def start_redis(directory: Path, port: int) -> subprocess.Popen[bytes]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    proc = spawn(1, [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                     "--dir", str(directory), "--logfile", str(directory / "redis.log")])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return proc
        except OSError:
            time.sleep(0.02)
    stop(proc)
    raise RuntimeError("redis-server did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per load step (default 5)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="interleaved rounds of every configuration; the tables show medians (default 3)")
    parser.add_argument("--redis-timeout-ms", type=int, default=1000,
                        help="state.timeout_ms of the redis runs (default 1000; the policy default is 50)")
    parser.add_argument("--out", default=str(HERE / "results"))
    args = parser.parse_args()
    wrk = ensure_wrk() is not None
    directory = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    script = wrk_script(directory)
    upstream_port, router_port, redis_port = free_port(), free_port(), free_port()
    url = f"http://127.0.0.1:{router_port}/v1/chat/completions"
    # timeout_ms: at 64 connections the router's one core is saturated, and a Redis answer can wait longer
    # than the default 50 ms for the event loop; that counts as an error and limits fall back to local for
    # 1 s (cheaper), which would flatter the numbers. Measured here: the Redis path on every request.
    redis_state = {"backend": "redis", "url": f"redis://127.0.0.1:{redis_port}/0",
                   "timeout_ms": args.redis_timeout_ms}
    # name -> (state, client limits). Requests + tokens: one script call to admit, one background write
    # to settle the tokens with `usage`; requests only: the admission call alone.
    states = {"memory": ({"backend": "memory"}, LIMITS), "redis": (redis_state, LIMITS),
              "redis, requests limit only": (redis_state, REQUESTS_ONLY)}
    paths = {}
    for index, (name, (state, limits)) in enumerate(states.items()):
        paths[name] = directory / f"policy{index}.yaml"
        paths[name].write_text(policy(upstream_port, router_port, state, limits))
    backends: dict[str, dict[int, list[dict[str, float]]]] = {name: {1: [], 64: []} for name in states}
    workers: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    load_before = os.getloadavg()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        procs.append(spawn(1, [sys.executable, str(HERE / "upstream.py"), "--port", str(upstream_port)]))
        wait_http(f"http://127.0.0.1:{upstream_port}/v1/chat/completions", method="POST")
        redis = start_redis(directory, redis_port)
        procs.append(redis)
        for round_ in range(1, args.rounds + 1):
            # (a) the state backend's cost, the router on one core
            for name in states:
                with router(paths[name], router_port, cpu=0) as pids:
                    load(url, 16, 1, script, wrk)  # warm-up: connections, the Lua script cached
                    for connections in (1, 64):
                        stats = measure(url, router_port, pids, connections, args.duration, script, wrk,
                                        redis.pid if name.startswith("redis") else None)
                        backends[name][connections].append(stats)
                        print(f"round {round_} {name:26} c={connections:<3} {stats['rps']:7.0f} req/s  "
                              f"p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
                              f"errors {stats['errors']:.0f}  backend errors {stats['backend_errors']:.0f}",
                              flush=True)
            # (b) --workers 2 vs 1, not pinned
            for count in (1, 2):
                with router(paths["memory"], router_port, cpu=None, workers=count) as pids:
                    load(url, 16, 1, script, wrk)
                    stats = measure(url, router_port, pids, 64, args.duration, script, wrk)
                    workers[count].append(stats)
                    print(f"round {round_} workers={count} c=64 {stats['rps']:7.0f} req/s  "
                          f"p50 {stats['p50_ms']:.3f} ms  p99 {stats['p99_ms']:.3f} ms  "
                          f"errors {stats['errors']:.0f}", flush=True)
    finally:
        for proc in procs:
            stop(proc)
        shutil.rmtree(directory, ignore_errors=True)

    summary = {"generator": "wrk" if wrk else "python (wrk unavailable)", "duration_s": args.duration,
               "rounds": args.rounds, "redis_timeout_ms": args.redis_timeout_ms, "cpus": os.cpu_count(),
               "python": sys.version.split()[0], "load_average_before": load_before,
               "backends": {name: {c: median(runs) for c, runs in steps.items()} for name, steps in backends.items()},
               "workers": {count: median(runs) for count, runs in workers.items()},
               "runs": {"backends": backends, "workers": workers}}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scaleout.json").write_text(json.dumps(summary, indent=2))
    table = render(summary)
    (out / "scaleout.md").write_text(table)
    print(table)
    return 0


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The median of every measure over the rounds, the spread of req/s, and the errors summed."""
    out = {key: statistics.median(run[key] for run in runs) for key in runs[0]}
    out["rps_min"], out["rps_max"] = min(run["rps"] for run in runs), max(run["rps"] for run in runs)
    for key in ("errors", "backend_errors"):
        out[key] = sum(run[key] for run in runs)
    return out


def render(summary: dict[str, Any]) -> str:
    backends, workers = summary["backends"], summary["workers"]
    load = ", ".join(f"{x:.2f}" for x in summary["load_average_before"])
    lines = [f"Load generator: {summary['generator']}, {summary['duration_s']} s per step, medians of "
             f"{summary['rounds']} interleaved rounds (req/s range in brackets); {summary['cpus']} CPUs, "
             f"Python {summary['python']}, load average before the run {load}.", "",
             "State backend (router pinned to CPU 0; wrk, upstream and redis-server on CPU 1; "
             f"state.timeout_ms {summary['redis_timeout_ms']}):", "",
             "| backend | connections | req/s | p50 ms | p99 ms | router CPU ms/req | redis CPU ms/req "
             "| non-2xx / backend errors |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, steps in backends.items():
        for connections, s in steps.items():
            redis_cpu = f"{s['redis_cpu_ms_per_request']:.3f}" if "redis_cpu_ms_per_request" in s else "-"
            lines.append(f"| {name} | {connections} | {s['rps']:.0f} ({s['rps_min']:.0f}-{s['rps_max']:.0f}) | "
                         f"{s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {s['router_cpu_ms_per_request']:.3f} | "
                         f"{redis_cpu} | {s['errors']:.0f} / {s['backend_errors']:.0f} |")
    memory = backends["memory"]
    lines.append("")
    for name in (n for n in backends if n != "memory"):
        for connections, s in backends[name].items():
            base = memory[connections]
            lines.append(f"- {name} vs memory at {connections} connection(s): throughput "
                         f"{s['rps'] / base['rps']:.2f}x, p50 {s['p50_ms'] - base['p50_ms']:+.3f} ms, "
                         f"p99 {s['p99_ms'] - base['p99_ms']:+.3f} ms, router CPU "
                         f"{s['router_cpu_ms_per_request'] - base['router_cpu_ms_per_request']:+.3f} ms/request.")
    lines += ["", "Workers (memory backend, router not pinned, 64 connections):", "",
              "| workers | req/s | p50 ms | p99 ms | router CPU ms/req (all workers) | vs 1 worker |",
              "|---:|---:|---:|---:|---:|---:|"]
    for count, s in workers.items():
        lines.append(f"| {count} | {s['rps']:.0f} ({s['rps_min']:.0f}-{s['rps_max']:.0f}) | {s['p50_ms']:.3f} | "
                     f"{s['p99_ms']:.3f} | {s['router_cpu_ms_per_request']:.3f} | "
                     f"{s['rps'] / workers[1]['rps']:.2f}x |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
