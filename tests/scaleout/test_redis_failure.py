"""Redis unreachable, silent, or killed mid-run: no request waits past the timeout, on_error holds,
and shared counting resumes when Redis is back."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest

from router import Router
from router.errors import NoTargetAvailable, RateLimited
from router.health.redis_backend import RETRY_AFTER_ERROR_S, SYNC_INTERVAL_S
from router.observe.observer import NullObserver
from tests.conftest import FakeProviderFactory
from tests.e2e.helpers import body
from tests.scaleout.conftest import RedisServer
from tests.support.policies import free_port, tiered_policy

TIMEOUT_MS = 50
# What a decision may take beyond the Redis timeout on this shared 2-core machine (scheduling).
SLACK_S = 0.05


class BackendErrors(NullObserver):
    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()

    def state_backend_error(self, backend: str, operation: str) -> None:
        self.errors[f"{backend}:{operation}"] += 1


def redis_state(url: str, on_error: str = "local", replicas: int = 1) -> dict[str, Any]:
    return {"backend": "redis", "url": url, "timeout_ms": TIMEOUT_MS, "on_error": on_error, "replicas": replicas,
            "key_prefix": "fail:"}


ENV = {"APP_KEY": "app-key-1"}


def limited_client(rps: float, burst: int) -> list[dict[str, Any]]:
    return [{"name": "app", "key_env": "APP_KEY", "limits": {"requests_per_second": rps, "burst": burst}}]


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[str]:
    """A TCP server that accepts and reads but never answers: the worst kind of dead Redis."""
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def timed_chat(router: Router, **kwargs: Any) -> tuple[float, str]:
    started = time.monotonic()
    try:
        await router.chat(body(), client="app", **kwargs)
        outcome = "ok"
    except RateLimited as exc:
        outcome = "limited:" + exc.message
    except NoTargetAvailable:
        outcome = "no_target"
    return time.monotonic() - started, outcome


@pytest.mark.parametrize("dead", ["refused", "silent"])
async def test_dead_redis_costs_one_timeout_then_local_share_applies(
        fake_provider: FakeProviderFactory, dead: str) -> None:
    up = await fake_provider("up")
    async with contextlib.AsyncExitStack() as stack:
        url = f"redis://127.0.0.1:{free_port()}/0" if dead == "refused" else await stack.enter_async_context(
            black_hole())
        observer = BackendErrors()
        # Limit 10/s, burst 10, 2 replicas: this replica enforces 5 on its own.
        policy = tiered_policy(up, clients=limited_client(10, 10), env=ENV, state=redis_state(url, replicas=2))
        router = await stack.enter_async_context(Router(policy, observer=observer))
        results = [await timed_chat(router) for _ in range(12)]
    durations = [d for d, _ in results]
    assert max(durations) <= TIMEOUT_MS / 1000 + SLACK_S, durations
    assert [o for _, o in results].count("ok") == 5  # the local share of the burst, not 10, not 12
    assert all(o.startswith("limited:") for _, o in results[5:])
    assert observer.errors["redis:start"] + observer.errors["redis:health"] >= 1
    # After the first failure nobody waits on Redis again within RETRY_AFTER_ERROR_S.
    assert sum(durations[1:]) < TIMEOUT_MS / 1000


@pytest.mark.slow
async def test_on_error_allow_and_deny(fake_provider: FakeProviderFactory) -> None:
    up = await fake_provider("up")
    url = f"redis://127.0.0.1:{free_port()}/0"
    allow = tiered_policy(up, clients=limited_client(1, 1), env=ENV, state=redis_state(url, "allow"))
    async with Router(allow) as router:
        assert [o for _, o in [await timed_chat(router) for _ in range(5)]] == ["ok"] * 5
    deny = tiered_policy(up, clients=limited_client(1, 1), env=ENV, state=redis_state(url, "deny"))
    async with Router(deny) as router:
        _, outcome = await timed_chat(router)
        assert outcome.startswith("limited:") and "unavailable" in outcome
    # A provider quota under deny: the target cannot be admitted, so nothing is sent.
    deny_provider = tiered_policy(up, providers={"up": {"limits": {"requests_per_minute": 600}}},
                                  state=redis_state(url, "deny"))
    hits_before = up.count
    async with Router(deny_provider) as router:
        with pytest.raises(NoTargetAvailable):
            await router.chat(body())
    assert up.count == hits_before


@pytest.mark.slow
async def test_redis_killed_mid_run_then_restarted(fake_provider: FakeProviderFactory,
                                                   redis_server: RedisServer) -> None:
    up = await fake_provider("up")
    observer = BackendErrors()
    # A limit far above the offered load: every request should be admitted, killed Redis or not.
    policy = tiered_policy(up, clients=limited_client(1000, 1000), env=ENV, state=redis_state(redis_server.url))
    timeline: list[tuple[float, float, str]] = []
    async with Router(policy, observer=observer) as router:
        start = time.monotonic()

        async def client() -> None:
            while time.monotonic() - start < 3.2:
                duration, outcome = await timed_chat(router)
                timeline.append((time.monotonic() - start, duration, outcome))
                await asyncio.sleep(0.005)

        clients = [asyncio.create_task(client()) for _ in range(4)]
        await asyncio.sleep(0.8)
        redis_server.kill()
        killed_at = time.monotonic() - start
        await asyncio.sleep(1.0)
        redis_server.start()
        restarted_at = time.monotonic() - start
        await asyncio.gather(*clients)
        resumed = redis_server.command("EXISTS", "fail:client:app:requests")
    assert {o for _, _, o in timeline} == {"ok"}
    # Nobody waited for Redis longer than the timeout (plus the fake provider's answer and scheduling
    # of four clients on a shared 2-core machine: hence the wider slack than for a single request).
    assert max(d for _, d, _ in timeline) <= TIMEOUT_MS / 1000 + 4 * SLACK_S
    assert sum(observer.errors.values()) >= 1
    during = [t for t, _, _ in timeline if killed_at + 0.1 < t < restarted_at]
    assert len(during) > 20  # requests kept flowing while Redis was gone
    # Shared counting resumed: the bucket key exists again in the restarted (empty) Redis.
    assert resumed.strip() == ":1", f"no shared bucket after restart ({RETRY_AFTER_ERROR_S=}, {SYNC_INTERVAL_S=})"
