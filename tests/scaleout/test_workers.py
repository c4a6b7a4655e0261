"""`router serve --workers 2` through the CLI: one port, two processes, one /metrics view.

The supervisor runs in a subprocess (`python -m router.cli serve -c policy --port P
--workers 2`); its workers are its children, found in /proc. Requests go on a fresh
connection each, so the kernel's SO_REUSEPORT hashing spreads them over both workers.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.mock import FakeProvider
from router.server.supervisor import MIN_UPTIME_S
from tests.scaleout.conftest import RedisServer
from tests.scaleout.fleet import (
    assert_429s_carry_retry_after,
    chat_bytes,
    fleet_policy,
    metric_families,
    offer,
    post,
    redis_state,
    run_routers,
    session,
    windows,
)
from tests.server.helpers import bearer
from tests.support.daemon import DaemonProcess, alive, child_pids
from tests.support.policies import CLIENT_ENV, free_port, policy_text, provider_block, route_block

WORKERS = 2
L = 40
B = 10
RUN_S = 4


def supervisor(directory: Path, policy: str) -> AbstractAsyncContextManager[list[DaemonProcess]]:
    """`router serve --workers 2`, until /readyz answers; stopped (and checked for leaks) at exit."""
    return run_routers(directory, policy, 1, "--workers", str(WORKERS))


def worker_pids(sup: DaemonProcess) -> dict[int, int]:
    """worker index -> pid, from the supervisor's children's command lines."""
    found = {}
    for pid in child_pids(sup.proc.pid):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--worker" in argv:
            index, _, _ = argv[argv.index(b"--worker") + 1].decode().partition("/")
            found[int(index)] = pid
    return found


def by_worker(samples: Sequence[Any], **labels: str) -> dict[str, float]:
    """Sum of the samples matching `labels`, per `worker` label."""
    out: dict[str, float] = defaultdict(float)
    for sample in samples:
        if all(sample.labels.get(k) == v for k, v in labels.items()):
            out[sample.labels.get("worker", "")] += sample.value
    return dict(out)


async def requests_by_worker(http: aiohttp.ClientSession, sup: DaemonProcess, **labels: str) -> dict[str, float]:
    families = await metric_families(http, sup.url("/metrics"))
    return by_worker(families.get("llm_router_requests_total", []), **labels)


async def wait_for_both_workers(http: aiohttp.ClientSession, sup: DaemonProcess, within_s: float = 15.0) -> None:
    """/readyz answers once one worker listens; the fleet view lists a worker once its socket answers."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        families = await metric_families(http, sup.url("/metrics"))
        workers = {s.labels.get("worker") for s in families.get("llm_router_build_info", [])}
        if workers == {str(i) for i in range(WORKERS)}:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not every worker answered within {within_s}s; stderr:\n{sup.stderr()}")


def fresh_connections() -> aiohttp.ClientSession:
    return session(force_close=True)


async def send(http: aiohttp.ClientSession, sup: DaemonProcess, count: int, model: str = "chat") -> list[int]:
    body = chat_bytes(model=model)
    t0 = asyncio.get_running_loop().time()
    outcomes = await asyncio.gather(*(post(http, sup.chat_url, body, t0, bearer()) for _ in range(count)))
    return [o.status for o in outcomes]


def open_policy(fake: FakeProvider | str, *, routes: Sequence[str] = ("chat",)) -> str:
    return policy_text({"fake": provider_block(fake)}, {name: route_block(("fake", "fake-model")) for name in routes},
                       clients=[{"name": "web", "key_env": CLIENT_ENV}])


async def test_both_workers_serve_and_metrics_cover_the_fleet(fake_provider: Any, tmp_path: Path) -> None:
    fake = await fake_provider("fake")
    requests = 100
    async with asyncio.timeout(45), supervisor(tmp_path, open_policy(fake)) as (sup,), \
            fresh_connections() as http:
        await wait_for_both_workers(http, sup)
        statuses = await send(http, sup, requests)
        assert statuses == [200] * requests
        fleet = await requests_by_worker(http, sup, route="chat")
        local = await metric_families(http, sup.url("/metrics?scope=local"))
    print(f"requests by worker: {fleet}")
    assert set(fleet) == {"0", "1"} and all(n > 0 for n in fleet.values()), fleet
    assert sum(fleet.values()) == requests
    samples = [s for s in local["llm_router_requests_total"] if s.labels.get("route") == "chat"]
    assert all("worker" not in s.labels for s in samples)  # one worker's own series, unlabelled
    assert sum(s.value for s in samples) in set(fleet.values())


@pytest.mark.slow
async def test_memory_state_splits_the_client_limit_between_workers(fake_provider: Any, tmp_path: Path) -> None:
    """Each worker enforces L/2 (burst B/2): the fleet admits about L, not 2L, of 2L offered.

    Measured (L=40, B=10, 4 s, 2L offered): windows [48, 40, 39, 41], total 168; by worker 84 + 84
    (each worker's bound: L/2 * 4 + B/2 = 85).
    """
    fake = await fake_provider("fake")
    policy = fleet_policy(fake, limits={"requests_per_second": L, "burst": B}, state={"backend": "memory"})
    async with asyncio.timeout(45), supervisor(tmp_path, policy) as (sup,), fresh_connections() as http:
        await wait_for_both_workers(http, sup)
        outcomes = await offer(http, [sup.chat_url], 2 * L, RUN_S)
        ok = await requests_by_worker(http, sup, route="chat", outcome="success")
        stderr = sup.stderr()
    per_window = windows(outcomes)
    admitted = sum(per_window)
    print(f"memory, 2 workers: windows {per_window}, total {admitted}, by worker {ok}")
    assert "each worker enforces 1/2 of every limit" in stderr
    assert_429s_carry_retry_after(outcomes)
    assert all(n <= L * 1.01 + B for n in per_window), per_window
    assert 0.9 * L * RUN_S <= admitted <= L * RUN_S * 1.01 + B, per_window
    # Each worker admitted its half: L/2 per second plus its half of the burst.
    assert set(ok) == {"0", "1"} and sum(ok.values()) == admitted, ok
    assert all(n <= L / 2 * RUN_S * 1.01 + B / 2 for n in ok.values()), ok


@pytest.mark.slow
async def test_redis_state_shares_the_client_limit_between_workers(
        redis_server: RedisServer, fake_provider: Any, tmp_path: Path) -> None:
    """Both workers take from one Redis bucket: per window <= L*1.01 + B, total >= 0.95 L T.

    Measured (L=40, B=10, 4 s, 2L offered): windows [49, 40, 40, 40], total 169; by worker 86 + 83.
    """
    fake = await fake_provider("fake")
    policy = fleet_policy(fake, limits={"requests_per_second": L, "burst": B}, state=redis_state(redis_server, WORKERS))
    async with asyncio.timeout(45), supervisor(tmp_path, policy) as (sup,), fresh_connections() as http:
        await wait_for_both_workers(http, sup)
        outcomes = await offer(http, [sup.chat_url], 2 * L, RUN_S)
        ok = await requests_by_worker(http, sup, route="chat", outcome="success")
        families = await metric_families(http, sup.url("/metrics"))
    per_window = windows(outcomes)
    admitted = sum(per_window)
    print(f"redis, 2 workers: windows {per_window}, total {admitted}, by worker {ok}")
    assert sum(s.value for s in families.get("llm_router_state_backend_errors_total", [])) == 0
    assert_429s_carry_retry_after(outcomes)
    assert all(n <= L * 1.01 + B for n in per_window), per_window
    assert 0.95 * L * RUN_S <= admitted <= L * RUN_S * 1.01 + B, per_window
    assert set(ok) == {"0", "1"} and all(n > 0 for n in ok.values()) and sum(ok.values()) == admitted, ok


@pytest.mark.slow
async def test_sighup_reloads_every_worker_and_sigterm_stops_them_all(tmp_path: Path) -> None:
    """The demo provider (`mock:`) runs once, in the supervisor; signals reach every worker."""
    mock_url = f"http://127.0.0.1:{free_port()}/v1"
    providers = {"demo": {**provider_block(mock_url), "mock": {}}}
    first = policy_text(providers, {"chat": route_block(("demo", "demo-model"))},
                        clients=[{"name": "web", "key_env": CLIENT_ENV}])
    second = policy_text(providers, {"chat": route_block(("demo", "demo-model")),
                                     "chat2": route_block(("demo", "demo-model"))},
                         clients=[{"name": "web", "key_env": CLIENT_ENV}])
    async with asyncio.timeout(45), supervisor(tmp_path, first) as (sup,), fresh_connections() as http:
        await wait_for_both_workers(http, sup)
        pids = worker_pids(sup)
        assert sorted(pids) == [0, 1], pids
        assert set(await send(http, sup, 10, model="chat2")) == {404}

        sup.policy_path.write_text(second, encoding="utf-8")
        sup.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while True:
            reloads = by_worker((await metric_families(http, sup.url("/metrics")))
                                .get("llm_router_config_reloads_total", []), result="success")
            if reloads == {"0": 1.0, "1": 1.0}:
                break
            assert time.monotonic() < deadline, f"reloads by worker: {reloads}"
            await asyncio.sleep(0.1)
        assert await send(http, sup, 40, model="chat2") == [200] * 40
        served = await requests_by_worker(http, sup, route="chat2", outcome="success")
        assert served.keys() == {"0", "1"}, served

        sup.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(sup.proc.wait(), 10)
        assert code == 0, sup.stderr()
        assert not [pid for pid in pids.values() if alive(pid)], "a worker outlived its supervisor"


@pytest.mark.slow
async def test_a_killed_worker_is_restarted_and_serving_resumes(fake_provider: Any, tmp_path: Path) -> None:
    fake = await fake_provider("fake")
    async with asyncio.timeout(45), supervisor(tmp_path, open_policy(fake)) as (sup,), \
            fresh_connections() as http:
        started = time.monotonic()
        await wait_for_both_workers(http, sup)
        before = worker_pids(sup)
        # A worker that dies within MIN_UPTIME_S of its start counts as unable to start (not restarted).
        await asyncio.sleep(max(0.0, MIN_UPTIME_S + 0.5 - (time.monotonic() - started)))
        killed = before[1]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while (after := worker_pids(sup)).get(1) in (None, killed):
            assert time.monotonic() < deadline, f"worker 1 not restarted; stderr:\n{sup.stderr()}"
            await asyncio.sleep(0.05)
        assert after[0] == before[0]  # its sibling kept serving
        await wait_for_both_workers(http, sup)
        assert await send(http, sup, 60) == [200] * 60
        served = await requests_by_worker(http, sup, route="chat", outcome="success")
        assert served.keys() == {"0", "1"}, served  # the new worker 1 serves too
        assert "worker 1 exited with -9; restarting" in sup.stderr()
        assert sup.proc.returncode is None
