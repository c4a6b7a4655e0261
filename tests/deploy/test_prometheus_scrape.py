"""A real Prometheus scrapes a real `router serve` under traffic and answers the dashboard's queries.

The daemon runs as a subprocess against fake providers on loopback (one flaky, one steady,
one always failing, so retries, failovers and a breaker show up). Prometheus (Debian's
package) runs with deploy/prometheus/prometheus.yml, its target and intervals changed to
scrape that daemon every second, and deploy/prometheus/alerts.yml loaded, so the rules are
also evaluated against real series. Every wait is bounded; every process is killed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
import yaml

from router.mock import FakeProvider, Ok, RandomFaults, Status
from tests.deploy.files import (
    ALERTS,
    PROMETHEUS_CONFIG,
    REPO,
    dashboard_queries,
    dockerfile_exec_form,
    load_yaml,
    substitute_variables,
)

FakeProviderFactory = Callable[..., Awaitable[FakeProvider]]
START_WITHIN_S = 20.0
DATA_WITHIN_S = 45.0
STOP_WITHIN_S = 5.0
# Panels that must show data after a few seconds of this traffic (the others must at least evaluate).
MUST_SHOW_DATA = (
    "Requests / s",
    "Requests / s by route",
    "Requests / s by outcome",
    "Request duration by route (p50 / p95 / p99)",
    "Upstream time to first byte by provider (p50 / p95 / p99)",
    "Upstream attempt duration by provider (p50 / p95 / p99)",
    "Gap between stream chunks by provider (p95 / p99)",
    "Upstream attempts / s by provider and outcome",
    "Retries / s by reason",
    "Failovers / s",
    "Breaker state by target",
    "Tokens / s by provider",
    "Replicas by version",
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def provider(fake: FakeProvider, **breaker: float) -> dict[str, Any]:
    return {"base_url": fake.base_url, "timeouts": {"connect_s": 1, "first_byte_s": 3, "idle_s": 2},
            "breaker": {"consecutive_failures": 100, "base_ejection_s": 0.5, "max_ejection_s": 1, **breaker}}


def policy_text(flaky: FakeProvider, steady: FakeProvider, broken: FakeProvider) -> str:
    retry = {"max_attempts": 3, "max_attempts_per_target": 2, "base_interval_s": 0.01, "max_interval_s": 0.05}
    return yaml.safe_dump({
        "version": 1,
        "providers": {"flaky": provider(flaky), "steady": provider(steady),
                      "broken": provider(broken, consecutive_failures=2)},
        "routes": {
            "chat": {"targets": [{"provider": "flaky", "model": "m", "priority": 0},
                                 {"provider": "steady", "model": "m", "priority": 1}], "retry": retry},
            "fallback": {"targets": [{"provider": "broken", "model": "m", "priority": 0},
                                     {"provider": "steady", "model": "m", "priority": 1}], "retry": retry},
        },
        "retry_budget": {"percent": 100, "min_per_second": 100},
        "server": {"drain_timeout_s": 1},
    }, sort_keys=False)


def prometheus_config(router_port: int) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml, pointed at the test's daemon and sped up."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ALERTS)]
    (job,) = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{router_port}"]}]
    job["scrape_timeout"] = "1s"  # may not exceed the interval
    return config


def read(path: Path) -> str:
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class Processes:
    """Subprocesses with their output in files; `stop_all` terminates, then kills, every one."""

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


@contextlib.asynccontextmanager
async def processes(directory: Path) -> AsyncIterator[Processes]:
    group = Processes(directory)
    try:
        yield group
    finally:
        await group.stop_all()


async def wait_for_http(session: aiohttp.ClientSession, url: str, group: Processes, log: Path) -> None:
    deadline = time.monotonic() + START_WITHIN_S
    while time.monotonic() < deadline:
        assert not group.exited(), f"a process exited ({group.exited()}) while waiting for {url}:\n{read(log)}"
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(url) as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{url} not ready within {START_WITHIN_S}s:\n{read(log)}")


async def drive_traffic(session: aiohttp.ClientSession, base_url: str, statuses: dict[int, int]) -> None:
    """Non-streamed and streamed requests on both routes until cancelled (the caller bounds it)."""
    url = f"{base_url}/v1/chat/completions"
    bodies = [
        {"model": "chat", "messages": [{"role": "user", "content": "hello"}]},
        {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "stream please"}]},
        {"model": "fallback", "messages": [{"role": "user", "content": "hello"}]},
    ]
    index = 0
    while True:
        body = bodies[index % len(bodies)]
        index += 1
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.post(url, json=body) as response:
                await response.read()
                statuses[response.status] = statuses.get(response.status, 0) + 1
        await asyncio.sleep(0.02)


async def instant_query(session: aiohttp.ClientSession, prometheus: str, expr: str) -> list[dict[str, Any]]:
    async with session.get(f"{prometheus}/api/v1/query", params={"query": expr}) as response:
        payload = await response.json()
    assert payload["status"] == "success", f"{expr}: {payload}"
    data = payload["data"]
    if data["resultType"] == "scalar":
        return [{"metric": {}, "value": data["result"]}]
    return data["result"]


def values(result: list[dict[str, Any]]) -> list[float]:
    return [float(sample["value"][1]) for sample in result]


def shows_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a positive value (a quantile is NaN for a series idle in the window)."""
    return any(math.isfinite(v) and v > 0 for v in values(result))


@pytest.mark.slow
async def test_prometheus_scrapes_the_daemon_and_answers_the_dashboard_queries(
        prometheus_server: str, fake_provider: FakeProviderFactory, tmp_path: Path) -> None:
    flaky = await fake_provider("flaky")
    flaky.set_default(RandomFaults({"503": 0.3}, seed=7, base=Ok(chunks=4, interval_s=0.005)))
    steady = (await fake_provider("steady")).set_default(Ok(chunks=4, interval_s=0.005))
    broken = (await fake_provider("broken")).set_default(Status(503))
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(flaky, steady, broken), encoding="utf-8")
    config = tmp_path / "prometheus.yml"
    router_port, prometheus_port = free_port(), free_port()
    config.write_text(yaml.safe_dump(prometheus_config(router_port), sort_keys=False), encoding="utf-8")
    router_url, prometheus_url = f"http://127.0.0.1:{router_port}", f"http://127.0.0.1:{prometheus_port}"
    statuses: dict[int, int] = {}

    async with processes(tmp_path) as group, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        router_log = await group.start("router", sys.executable, "-m", "router.cli", "serve", "-c", str(policy),
                                       "--port", str(router_port), "--log-level", "warning")
        await wait_for_http(session, f"{router_url}/readyz", group, router_log)
        prometheus_log = await group.start(
            "prometheus", prometheus_server, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prometheus_port}", "--log.level=warn")
        await wait_for_http(session, f"{prometheus_url}/-/ready", group, prometheus_log)

        traffic = asyncio.create_task(drive_traffic(session, router_url, statuses))
        queries = [(title, substitute_variables(expr)) for title, expr in dashboard_queries()]
        results: dict[str, list[dict[str, Any]]] = {}
        missing: list[str] = ["(not queried yet)"]
        try:
            deadline = time.monotonic() + DATA_WITHIN_S
            while time.monotonic() < deadline:
                await asyncio.sleep(1.0)
                assert not traffic.done(), traffic
                assert not group.exited(), f"router:\n{read(router_log)}\nprometheus:\n{read(prometheus_log)}"
                headline = await instant_query(session, prometheus_url, "sum(rate(llm_router_requests_total[1m]))")
                if not shows_data(headline):
                    continue
                # Every dashboard query must evaluate; the main panels must show data. A panel's
                # targets (p50, p95, p99) are pooled under its title.
                results = {}
                for title, expr in queries:
                    results.setdefault(title, []).extend(await instant_query(session, prometheus_url, expr))
                missing = [title for title in MUST_SHOW_DATA if not shows_data(results.get(title, []))]
                if not missing:
                    break
        finally:
            traffic.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await traffic

        assert statuses.get(200, 0) > 0, statuses
        assert not missing, (f"panels without data after {DATA_WITHIN_S}s: {missing}\n"
                             f"results: { {t: results.get(t) for t in missing} }\nstatuses: {statuses}\n"
                             f"router:\n{read(router_log)}\nprometheus:\n{read(prometheus_log)}")
        assert sorted({s["metric"]["route"] for s in results["Requests / s by route"]}) == ["chat", "fallback"]
        outcomes = {s["metric"]["outcome"] for s in results["Upstream attempts / s by provider and outcome"]}
        assert {"ok", "server_error"} <= outcomes

        # Prometheus itself: the target is up, and every alert rule evaluates without error on real series.
        async with session.get(f"{prometheus_url}/api/v1/targets") as response:
            (target,) = (await response.json())["data"]["activeTargets"]
        assert target["health"] == "up", target
        assert target["labels"]["job"] == "llm-router"
        rules: list[dict[str, Any]] = []
        for _ in range(20):
            async with session.get(f"{prometheus_url}/api/v1/rules") as response:
                rules = [rule for group_ in (await response.json())["data"]["groups"] for rule in group_["rules"]]
            if rules and all(rule["health"] != "unknown" for rule in rules):
                break
            await asyncio.sleep(0.5)
        assert rules and [(r["name"], r["health"], r.get("lastError")) for r in rules if r["health"] != "ok"] == []


async def test_image_healthcheck_command_passes_on_a_live_daemon_and_fails_on_a_dead_one(
        fake_provider: FakeProviderFactory, tmp_path: Path) -> None:
    steady = await fake_provider("steady")
    policy = tmp_path / "policy.yaml"
    policy.write_text(yaml.safe_dump({"version": 1, "providers": {"steady": provider(steady)},
                                      "routes": {"chat": {"targets": [{"provider": "steady", "model": "m"}]}},
                                      "server": {"drain_timeout_s": 0}}), encoding="utf-8")
    port = free_port()
    # The image's HEALTHCHECK, run by this interpreter; its URL comes from the image's ENV, overridden here.
    command = [sys.executable, *dockerfile_exec_form("HEALTHCHECK")[1:]]

    async def healthcheck(url: str) -> int:
        proc = await asyncio.create_subprocess_exec(*command, env={**os.environ, "LLM_ROUTER_HEALTHCHECK_URL": url},
                                                    stdout=asyncio.subprocess.DEVNULL,
                                                    stderr=asyncio.subprocess.DEVNULL)
        try:
            return await asyncio.wait_for(proc.wait(), 10)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    async with processes(tmp_path) as group, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        log = await group.start("router", sys.executable, "-m", "router.cli", "serve", "-c", str(policy),
                                "--port", str(port), "--log-level", "warning")
        await wait_for_http(session, f"http://127.0.0.1:{port}/readyz", group, log)
        assert await healthcheck(f"http://127.0.0.1:{port}/healthz") == 0
        assert await healthcheck(f"http://127.0.0.1:{free_port()}/healthz") != 0
