"""Lifecycle under load: SIGTERM drains, and a hundred SIGHUP reloads, valid and invalid, fail nothing.

The daemon is the real `router serve` in a subprocess (tests/support/daemon.DaemonProcess).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from router.errors import PolicyError
from router.policy import parse_policy
from tests.support.daemon import DaemonProcess
from tests.support.load import ANOMALY, COMPLETE, ERROR, LoadConfig, Result, run_load
from tests.support.scenarios import daemon_errors
from tests.support.soak_env import SoakProviders, soak_policy

DRAIN_S = 5.0


@pytest.mark.slow
async def test_sigterm_under_load_lets_every_accepted_request_finish(tmp_path: Path) -> None:
    async with SoakProviders(mix={}) as providers:
        for name in providers.names:  # JSON answers take 0.3 s, streams 0.3 s + 6 x 0.1 s
            providers.set_faults(name, {}, delay_s=0.3, interval_s=0.1)
        policy = soak_policy(providers.base_urls(), drain_s=DRAIN_S, ttft_s=None,
                             timeouts={"first_byte_s": 2, "idle_s": 2})
        async with DaemonProcess(policy, tmp_path) as daemon:
            config = LoadConfig(url=daemon.chat_url, requests=100_000, duration_s=4.0, rate=150, concurrency=400,
                                seed=11, id_prefix="term", timeout_s=15)

            async def terminate() -> tuple[float, int | None, float]:
                await asyncio.sleep(1.5)
                signalled = time.monotonic()
                daemon.send(signal.SIGTERM)
                code = await daemon.wait_exit(DRAIN_S + 2)
                return signalled, code, time.monotonic()

            run, (signalled, code, exited) = await asyncio.gather(run_load(config), terminate())
            lines = {line["request_id"]: line for line in daemon.access_log()}
            stderr = daemon.stderr()

    # Sent 50 ms or more before the signal: surely read by the daemon before it stopped listening.
    before = [r for r in run.results if r.started < signalled - 0.05]
    in_flight = [r for r in before if r.ended > signalled]
    after = [r for r in run.results if r.started >= signalled - 0.05]
    print(f"SIGTERM with {len(in_flight)} requests in flight: exit {code} after {exited - signalled:.2f} s; "
          f"sent before {Counter(r.outcome for r in before)}, around or after "
          f"{Counter((r.outcome, r.detail) for r in after)}")
    assert code == 0, stderr
    assert exited - signalled <= DRAIN_S + 1
    assert len(in_flight) >= 50
    # Nothing the daemon had accepted was dropped: in flight at the signal or not, it got its whole answer.
    assert [r.request_id for r in before if r.outcome != COMPLETE] == []
    assert all(lines[r.request_id]["outcome"] == "success" for r in before)
    # What came around or after the signal was answered in full (accepted just before the listener closed), refused
    # with a 503 while draining, or not accepted at all: connection refused, or a keep-alive connection
    # closed (or reset, with the request unread) as it arrived. None of those reached the router.
    assert all(_answered_or_refused(r) for r in after), Counter((r.outcome, r.detail) for r in after)
    assert [r.request_id for r in after if r.outcome == ANOMALY and r.request_id in lines] == []
    assert [line for line in lines.values() if line["outcome"] not in ("success", "draining")] == []
    assert daemon_errors(stderr) == []


def _answered_or_refused(result: Result) -> bool:
    if result.outcome == COMPLETE:
        return True
    if result.outcome == ERROR:
        return result.detail == "503:draining"
    return result.outcome == ANOMALY and result.detail in ("transport_ClientConnectorError",
                                                          "transport_ServerDisconnectedError",
                                                          "transport_ClientOSError")


# -- reloads ---------------------------------------------------------------------------------------

def valid_variant(base_urls: dict[str, str], index: int, rng: random.Random) -> str:
    """Another valid policy: one provider may leave, weights, timeouts, breaker and deadline change,
    and a route `gen-<index>` marks it as applied."""
    left = rng.choice([None, None, *base_urls])
    kept = {name: url for name, url in base_urls.items() if name != left}
    return soak_policy(kept, deadline_s=rng.choice([3.0, 5.0, 8.0]), ttft_s=None,
                       weights={name: rng.choice([1.0, 2.0, 5.0]) for name in kept},
                       breaker={"consecutive_failures": rng.randint(3, 10)},
                       timeouts={"first_byte_s": rng.choice([0.5, 1.0, 2.0])},
                       extra_routes={f"gen-{index}": {"targets": [{"provider": next(iter(kept)), "model": "g"}]}})


def invalid_variant(base_urls: dict[str, str], index: int, kind: int) -> str:
    """A policy file the loader must reject; if it were applied, route `bad-<index>` would show."""
    good = soak_policy(base_urls, ttft_s=None,
                       extra_routes={f"bad-{index}": {"targets": [{"provider": "alpha", "model": "b"}]}})
    data: dict[str, Any] = yaml.safe_load(good)
    match kind:
        case 0:
            return good + "retry_budgett: {percent: 10}\n"  # a typo: unknown key
        case 1:
            data["routes"]["chat"]["retry"]["max_attempts"] = 0
        case 2:
            data["routes"][f"bad-{index}"]["targets"][0]["provider"] = "nowhere"
        case 3:
            data["providers"]["alpha"]["api_key_env"] = "SOAK_TEST_UNSET_KEY"
        case 4:
            return good[: len(good) // 3]  # a half-written file
        case 5:
            return ""
        case 6:
            return good + "version: 1\n"  # a duplicate key
        case _:
            return good + "routes: [\n"  # not YAML
    return yaml.safe_dump(data, sort_keys=False)


async def _reloads(http: aiohttp.ClientSession, daemon: DaemonProcess) -> int:
    metrics = await daemon.metrics(http)
    return int(metrics.get("llm_router_config_reloads_total"))


async def _models(http: aiohttp.ClientSession, daemon: DaemonProcess) -> set[str]:
    async with http.get(f"{daemon.base_url}/v1/models") as response:
        assert response.status == 200
        return {item["id"] for item in (await response.json())["data"]}


@pytest.mark.slow
async def test_a_hundred_reloads_under_load_fail_no_request_and_never_apply_an_invalid_file(tmp_path: Path) -> None:
    rng = random.Random(12)
    async with SoakProviders(mix={}) as providers:
        for name in providers.names:
            providers.set_faults(name, {}, delay_s=0.02, interval_s=0.01)
        urls = providers.base_urls()
        plan = [rng.random() < 0.6 for _ in range(100)]  # True: a valid file
        files = [valid_variant(urls, i, rng) if valid else invalid_variant(urls, i, i % 8)
                 for i, valid in enumerate(plan)]
        for text, valid in zip(files, plan, strict=True):  # the loader agrees with the plan
            if not valid:
                with pytest.raises(PolicyError):
                    parse_policy(text, source="variant.yaml", env={})
        async with DaemonProcess(soak_policy(urls, ttft_s=None), tmp_path) as daemon, \
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            stop = asyncio.Event()
            config = LoadConfig(url=daemon.chat_url, requests=100_000, duration_s=60, concurrency=32, seed=12,
                                id_prefix="reload")
            load = asyncio.create_task(run_load(config, stop=stop))
            applied_models = await _models(http, daemon)
            wrong: list[str] = []
            took: list[float] = []
            try:
                for index, (text, valid) in enumerate(zip(files, plan, strict=True)):
                    started = time.monotonic()
                    daemon.write_policy(text)
                    daemon.send(signal.SIGHUP)
                    async with asyncio.timeout(3):
                        while await _reloads(http, daemon) < index + 1:  # noqa: ASYNC110 - another process
                            await asyncio.sleep(0.005)
                    took.append(time.monotonic() - started)
                    models = await _models(http, daemon)
                    await asyncio.sleep(0.02)  # requests start and end on each policy
                    if valid and f"gen-{index}" not in models:
                        wrong.append(f"valid file {index} not applied: {sorted(models)}")
                    if not valid and models != applied_models:
                        wrong.append(f"invalid file {index} changed the routes to {sorted(models)}")
                    if valid:
                        applied_models = models
            finally:
                stop.set()
                run = await load
            metrics = await daemon.metrics(http)
            lines = await daemon.wait_access_lines(len(run.results))
            stderr = daemon.stderr()

    print(f"100 reloads ({sum(plan)} valid) in {sum(took):.1f} s under load: {len(run.results)} requests, "
          f"{dict(run.outcomes())}; reload to effect max {max(took) * 1000:.0f} ms")
    assert wrong == []
    assert metrics.get("llm_router_config_reloads_total", result="success") == sum(plan)
    assert metrics.get("llm_router_config_reloads_total", result="failure") == 100 - sum(plan)
    assert len(run.results) >= 500
    assert run.outcomes() == Counter({COMPLETE: len(run.results)})
    assert len(lines) == len(run.results) and {line["outcome"] for line in lines} == {"success"}
    rejected = [line for line in daemon_errors(stderr) if "policy reload rejected" in line]
    assert len(rejected) == 100 - sum(plan)
    assert [line for line in daemon_errors(stderr) if "policy reload rejected" not in line] == []
