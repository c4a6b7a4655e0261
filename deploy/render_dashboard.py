"""Render the Grafana dashboard's main panels from a real run, as a PNG (docs/dashboard.png).

    python deploy/render_dashboard.py [--duration 60] [--out docs/dashboard.png]

Starts three fake providers on 127.0.0.1 (flaky: a few percent of 503 and 429 plus a short
outage in the middle of the run; steady; slow), a `router serve` daemon on a free port with a
temporary policy (three routes with failover, no clients), and Prometheus (`prometheus` on the
PATH, e.g. Debian's package) scraping it every second into a temporary data dir. Drives mixed
streamed and non-streamed traffic at modest concurrency for --duration seconds, then asks
Prometheus for the dashboard's own panel expressions (read from deploy/grafana/dashboard.json,
`$route`/`$provider` = all, `$__rate_interval` = 10s) over the run and draws them with
matplotlib in a 2x3 grid. Every process it starts is stopped before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any

import aiohttp
import matplotlib
import yaml

from router.mock import FakeProvider, Ok, RandomFaults, Status

matplotlib.use("Agg")
import matplotlib.pyplot as plt

REPO = Path(__file__).resolve().parent.parent
DASHBOARD = REPO / "deploy" / "grafana" / "dashboard.json"
PROMETHEUS_CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
START_WITHIN_S = 20.0
STOP_WITHIN_S = 5.0
RATE_INTERVAL = "10s"
CONCURRENCY = 8


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider(fake: FakeProvider) -> dict[str, Any]:
    return {"base_url": fake.base_url, "timeouts": {"connect_s": 1, "first_byte_s": 3, "idle_s": 2},
            "breaker": {"consecutive_failures": 5, "base_ejection_s": 2, "max_ejection_s": 8}}


def policy_text(flaky: FakeProvider, steady: FakeProvider, slow: FakeProvider) -> str:
    retry = {"max_attempts": 3, "max_attempts_per_target": 2, "base_interval_s": 0.01, "max_interval_s": 0.05}

    def route(first: str, second: str) -> dict[str, Any]:
        return {"targets": [{"provider": first, "model": "m", "priority": 0},
                            {"provider": second, "model": "m", "priority": 1}], "retry": retry}

    return yaml.safe_dump({
        "version": 1,
        "providers": {"flaky": provider(flaky), "steady": provider(steady), "slow": provider(slow)},
        "routes": {"chat": route("flaky", "steady"), "longform": route("slow", "steady"),
                   "batch": route("steady", "flaky")},
        "retry_budget": {"percent": 50, "min_per_second": 20},
        "server": {"drain_timeout_s": 1},
    }, sort_keys=False)


def prometheus_config(router_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, pointed at this run's daemon, scraping every second, no rules."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text(encoding="utf-8"))
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config.pop("rule_files", None)
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{router_port}"]}]
    job["scrape_timeout"] = "1s"
    return config


def tail(path: Path) -> str:
    return path.read_text(errors="replace")[-3000:] if path.exists() else ""


class Processes:
    """Subprocesses with their output in files; `stop_all` terminates, then kills, each one it started."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.procs: list[asyncio.subprocess.Process] = []
        self.files: list[IO[bytes]] = []

    async def start(self, name: str, *argv: str) -> Path:
        log = self.directory / f"{name}.log"
        out = log.open("wb")
        self.files.append(out)
        proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL, stdout=out,
                                                    stderr=asyncio.subprocess.STDOUT, cwd=REPO)
        self.procs.append(proc)
        return log

    def exited(self) -> list[int]:
        return [proc.returncode for proc in self.procs if proc.returncode is not None]

    async def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), STOP_WITHIN_S)
                except TimeoutError:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        for file in self.files:
            file.close()


async def wait_for_http(session: aiohttp.ClientSession, url: str, group: Processes, log: Path) -> None:
    deadline = time.monotonic() + START_WITHIN_S
    while time.monotonic() < deadline:
        if group.exited():
            raise RuntimeError(f"a process exited ({group.exited()}) while waiting for {url}:\n{tail(log)}")
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {START_WITHIN_S}s:\n{tail(log)}")


BODIES = [
    (4, {"model": "chat", "messages": [{"role": "user", "content": "hello"}]}),
    (3, {"model": "chat", "stream": True, "stream_options": {"include_usage": True},
         "messages": [{"role": "user", "content": "stream please"}]}),
    (2, {"model": "longform", "stream": True, "messages": [{"role": "user", "content": "a long answer"}]}),
    (1, {"model": "longform", "messages": [{"role": "user", "content": "a long answer"}]}),
    (2, {"model": "batch", "messages": [{"role": "user", "content": "summarise"}]}),
]


async def worker(session: aiohttp.ClientSession, url: str, seed: int, until: float, statuses: dict[int, int]) -> None:
    rng = random.Random(seed)
    weights = [weight for weight, _ in BODIES]
    while time.monotonic() < until:
        (_, body), = rng.choices(BODIES, weights)
        try:
            async with session.post(url, json=body) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
        except (aiohttp.ClientError, TimeoutError):
            statuses[0] = statuses.get(0, 0) + 1
        await asyncio.sleep(rng.uniform(0.02, 0.08))


async def drive_traffic(session: aiohttp.ClientSession, base_url: str, flaky: FakeProvider, flaky_fault: Any,
                        duration: float, statuses: dict[int, int]) -> None:
    """CONCURRENCY workers for `duration` seconds; the flaky provider is down (503) from 40% to 55% of it."""
    start = time.monotonic()
    until = start + duration
    url = f"{base_url}/v1/chat/completions"
    workers = [asyncio.create_task(worker(session, url, seed, until, statuses)) for seed in range(CONCURRENCY)]
    try:
        await asyncio.sleep(duration * 0.40)
        flaky.set_default(Status(503))
        await asyncio.sleep(duration * 0.15)
        flaky.set_default(flaky_fault)
        await asyncio.wait_for(asyncio.gather(*workers), timeout=max(0.0, until - time.monotonic()) + 15)
    finally:
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)


def dashboard_targets() -> tuple[str, dict[str, list[dict[str, Any]]]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    panels: dict[str, list[dict[str, Any]]] = {}
    for panel in dashboard["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            if inner.get("targets"):
                panels[inner["title"]] = inner["targets"]
    return dashboard["title"], panels


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", RATE_INTERVAL).replace("$route", ".*").replace("$provider", ".*")
            .replace("$__range", "1m"))


def legend(template: str, metric: dict[str, str]) -> str:
    if not template:
        return ", ".join(f"{k}={v}" for k, v in sorted(metric.items())) or "value"
    for key, value in metric.items():
        template = template.replace("{{" + key + "}}", value)
    return template


async def range_query(session: aiohttp.ClientSession, prometheus: str, expr: str, start: float, end: float,
                      step: float) -> list[dict[str, Any]]:
    params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step}"}
    async with session.get(f"{prometheus}/api/v1/query_range", params=params) as response:
        payload = await response.json()
    if payload.get("status") != "success":
        raise RuntimeError(f"{expr}: {payload}")
    return payload["data"]["result"]


Series = tuple[str, list[float], list[float]]


async def panel_series(session: aiohttp.ClientSession, prometheus: str, targets: list[dict[str, Any]],
                       start: float, end: float, step: float) -> list[Series]:
    series: list[Series] = []
    for target in targets:
        for result in await range_query(session, prometheus, substitute(target["expr"]), start, end, step):
            points = [(float(t) - start, float(v)) for t, v in result["values"]]
            points = [(t, v) for t, v in points if math.isfinite(v)]
            if points:
                series.append((legend(target.get("legendFormat", ""), result["metric"]),
                               [t for t, _ in points], [v for _, v in points]))
    return series


# (panel title in the dashboard, unit) in grid order; a 6th cell combines retries, failovers and breakers.
MAIN_PANELS = [
    ("Requests / s by route", "req/s"),
    ("Error ratio by route", "%"),
    ("Request duration by route (p50 / p95 / p99)", "s"),
    ("Upstream time to first byte by provider (p50 / p95 / p99)", "s"),
    ("Upstream attempts / s by provider and outcome", "req/s"),
]


def draw(ax: Any, title: str, unit: str, series: list[Series], *, only: str | None = None) -> None:
    styles = {"p50": ":", "p95": "-", "p99": "--"}
    for name, xs, ys in series:
        if only and not name.startswith(only):
            continue
        if unit == "%":
            ys = [100 * y for y in ys]
        style = styles.get(name.split(" ")[0], "-")
        ax.plot(xs, ys, style, linewidth=1.4, label=name)
    ax.set_title(title, fontsize=11, loc="left")
    ax.set_ylabel(unit)
    ax.set_xlabel("time since start of traffic (s)")
    ax.grid(True, alpha=0.3)
    ax.set_ylim(bottom=0)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    else:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", color="grey")


async def run(duration: float, out: Path, prometheus_bin: str) -> None:
    title, targets = dashboard_targets()
    for name, _ in MAIN_PANELS:
        if name not in targets:
            raise SystemExit(f"panel {name!r} not found in {DASHBOARD}")
    flaky_fault = RandomFaults({"503": 0.04, "429": 0.01}, retry_after="1", seed=7,
                               base=Ok(chunks=6, interval_s=0.01, delay_s=0.02))
    fakes: list[FakeProvider] = []
    with tempfile.TemporaryDirectory(prefix="render-dashboard-") as tmp:
        directory = Path(tmp)
        group = Processes(directory)
        try:
            for name in ("flaky", "steady", "slow"):
                fake = FakeProvider(name, models=["m"], max_hits=1000)
                await fake.start()
                fakes.append(fake)
            flaky, steady, slow = fakes
            flaky.set_default(flaky_fault)
            steady.set_default(Ok(chunks=6, interval_s=0.01, delay_s=0.03))
            slow.set_default(Ok(chunks=12, interval_s=0.05, delay_s=0.4))
            policy = directory / "policy.yaml"
            policy.write_text(policy_text(flaky, steady, slow), encoding="utf-8")
            config = directory / "prometheus.yml"
            router_port, prometheus_port = free_port(), free_port()
            config.write_text(yaml.safe_dump(prometheus_config(router_port), sort_keys=False), encoding="utf-8")
            router_url, prometheus_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{prometheus_port}"
            statuses: dict[int, int] = {}
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
                router_log = await group.start("router", sys.executable, "-m", "router.cli", "serve", "-c",
                                               str(policy), "--port", str(router_port), "--log-level", "warning")
                await wait_for_http(session, f"{router_url}/readyz", group, router_log)
                prometheus_log = await group.start(
                    "prometheus", prometheus_bin, f"--config.file={config}",
                    f"--storage.tsdb.path={directory / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}",
                    "--log.level=warn")
                await wait_for_http(session, f"{prometheus_url}/-/ready", group, prometheus_log)
                await asyncio.sleep(2)  # a first scrape before the traffic
                start = time.time()
                print(f"driving traffic for {duration:.0f}s ...", file=sys.stderr)
                await drive_traffic(session, router_url, flaky, flaky_fault, duration, statuses)
                await asyncio.sleep(3)  # the last scrapes
                end = time.time()
                if group.exited():
                    raise RuntimeError(f"router:\n{tail(router_log)}\nprometheus:\n{tail(prometheus_log)}")
                print(f"statuses: {dict(sorted(statuses.items()))}", file=sys.stderr)
                step = 1.0
                data = {name: await panel_series(session, prometheus_url, targets[name], start, end, step)
                        for name, _ in MAIN_PANELS}
                retries = await panel_series(session, prometheus_url, targets["Retries / s by reason"],
                                             start, end, step)
                failovers = await panel_series(session, prometheus_url, targets["Failovers / s"], start, end, step)
                breakers = await panel_series(session, prometheus_url, targets["Breaker state by target"],
                                              start, end, step)
        finally:
            await group.stop_all()
            for fake in reversed(fakes):
                await fake.stop()

    fig, axes = plt.subplots(2, 3, figsize=(19, 10), constrained_layout=True)
    cells = list(axes.flat)
    for ax, (name, unit) in zip(cells, MAIN_PANELS, strict=False):
        if name.startswith("Upstream time to first byte"):
            draw(ax, "Upstream time to first byte by provider (p95)", unit, data[name], only="p95")
        else:
            draw(ax, name, unit, data[name])
    ax = cells[5]
    combined = [(f"retry: {name}", xs, ys) for name, xs, ys in retries]
    combined += [(f"failover {name}", xs, ys) for name, xs, ys in failovers]
    draw(ax, "Retries / s by reason, failovers / s, open breakers (shaded)", "events/s", combined)
    shades = ["tab:red", "tab:purple", "tab:brown"]
    for index, (name, xs, ys) in enumerate(breakers):
        opened = [x for x, y in zip(xs, ys, strict=True) if y >= 1]
        for x in opened:
            ax.axvspan(x - step / 2, x + step / 2, color=shades[index % len(shades)], alpha=0.15, linewidth=0)
        if opened:
            ax.plot([], [], color=shades[index % len(shades)], alpha=0.4, linewidth=8, label=f"breaker open: {name}")
    ax.legend(fontsize=7, loc="upper left", ncol=2, framealpha=0.8)
    ok = statuses.get(200, 0)
    fig.suptitle(f"{title}: main panels from a real run ({duration:.0f}s of traffic, {sum(statuses.values())} "
                 f"requests, {ok} answered 200; flaky provider down from {0.4 * duration:.0f}s to "
                 f"{0.55 * duration:.0f}s)", fontsize=13)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    print(f"wrote {out}", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (10..300, default 60)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--prometheus", default=shutil.which("prometheus") or "/usr/bin/prometheus")
    args = parser.parse_args()
    duration = min(max(args.duration, 10.0), 300.0)
    asyncio.run(run(duration, args.out, args.prometheus))


if __name__ == "__main__":
    main()
