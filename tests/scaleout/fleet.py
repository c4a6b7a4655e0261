"""Helpers for the scale-out tests: router processes through the CLI, offered load, windows, metrics.

Used by test_fleet_limits.py (four daemons on one Redis) and test_workers.py
(`router serve --workers 2`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from router.mock import FakeProvider
from tests.scaleout.conftest import RedisServer
from tests.server.helpers import assert_no_leak, bearer
from tests.support.daemon import DaemonProcess
from tests.support.policies import CLIENT_ENV, env_with_keys, free_port, policy_text, provider_block, route_block

CHARS_PER_TOKEN = 4  # router.request: token_estimate = len(body) // 4 + max_tokens


# -- processes ----------------------------------------------------------------------------------

def distinct_free_ports(count: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


@contextlib.asynccontextmanager
async def run_routers(directory: Path, policy: str, count: int, *args: str) -> AsyncIterator[list[DaemonProcess]]:
    """`count` daemons (`python -m router.cli serve -c policy --port P *args`), started at once, until ready.

    At exit each gets SIGTERM (then SIGKILL) and its output must hold no traceback and no key."""
    routers = [DaemonProcess(policy, directory, env=env_with_keys(), args=("--log-level", "warning", *args),
                             port=port, name=f"router{index}")
               for index, port in enumerate(distinct_free_ports(count))]
    try:
        for router in routers:
            await router.spawn()
        await asyncio.gather(*(router.wait_ready(within_s=20) for router in routers))
        yield routers
    finally:
        await asyncio.gather(*(router.stop() for router in routers))
    for router in routers:
        assert_no_leak(router.stderr(), router.stdout())


def fleet_policy(fake: FakeProvider, *, limits: Mapping[str, Any], state: Mapping[str, Any]) -> str:
    return policy_text(
        {"fake": provider_block(fake, max_connections=200)},
        {"chat": route_block(("fake", "fake-model"))},
        clients=[{"name": "web", "key_env": CLIENT_ENV, "limits": dict(limits)}],
        state=dict(state))


def redis_state(server: RedisServer, replicas: int) -> dict[str, Any]:
    # replicas: on a Redis error each daemon would enforce 1/replicas locally. timeout_ms is generous so a busy
    # 2-core test machine does not turn a slow answer into that fallback; the tests check no error happened.
    return {"backend": "redis", "url": server.url, "key_prefix": "fleet:", "timeout_ms": 1000,
            "on_error": "local", "replicas": replicas}


# -- load ---------------------------------------------------------------------------------------


@dataclass(slots=True)
class Outcome:
    status: int
    sent: float  # seconds since the load started
    done: float
    retry_after: str | None
    body: bytes


def chat_bytes(content: str = "Hello", **fields: Any) -> bytes:
    return json.dumps({"model": "chat", "messages": [{"role": "user", "content": content}], **fields}).encode()


async def post(session: aiohttp.ClientSession, url: str, body: bytes, t0: float,
               headers: Mapping[str, str]) -> Outcome:
    loop = asyncio.get_running_loop()
    sent = loop.time() - t0
    async with session.post(url, data=body, headers={"Content-Type": "application/json", **headers}) as response:
        data = await response.read()
        return Outcome(response.status, sent, loop.time() - t0, response.headers.get("Retry-After"), data)


async def offer(session: aiohttp.ClientSession, urls: Sequence[str], rate: float, duration_s: float,
                body: bytes | None = None) -> list[Outcome]:
    """`rate` requests per second for `duration_s`, round robin over `urls`, on schedule (not closed loop)."""
    loop = asyncio.get_running_loop()
    body = body if body is not None else chat_bytes()
    t0 = loop.time()
    tasks = []
    for i in range(round(rate * duration_s)):
        delay = t0 + i / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(post(session, urls[i % len(urls)], body, t0, bearer())))
    return await asyncio.gather(*tasks)


def windows(outcomes: Sequence[Outcome], status: int = 200) -> list[int]:
    """Responses with `status` per 1-second window since the load started, by arrival time.

    Arrival is after admission, so a window can only lose admissions to the next one: the first
    window counts at most what was admitted in it, and the later ones are where the drained bucket
    leaves `burst` of slack."""
    counts = Counter(int(o.done) for o in outcomes if o.status == status)
    return [counts.get(i, 0) for i in range(max(counts, default=-1) + 1)]


def assert_429s_carry_retry_after(outcomes: Sequence[Outcome]) -> None:
    for o in outcomes:
        assert o.status in (200, 429), (o.status, o.body[:300])
        if o.status == 429:
            assert o.retry_after is not None and int(o.retry_after) >= 1, o


async def metric_families(session: aiohttp.ClientSession, url: str) -> dict[str, list[Any]]:
    """name -> samples of a /metrics page."""
    async with session.get(url) as response:
        assert response.status == 200
        text = await response.text()
    families: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(sample.name, []).append(sample)
    return families


async def backend_errors(session: aiohttp.ClientSession, routers: Sequence[DaemonProcess]) -> float:
    total = 0.0
    for r in routers:
        samples = (await metric_families(session, r.url("/metrics"))).get("llm_router_state_backend_errors_total", [])
        total += sum(s.value for s in samples)
    return total


def session(**connector: Any) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, **connector),
                                 timeout=aiohttp.ClientTimeout(total=20))
