"""The admin state of a replica on Redis shows the backend's health and what the fleet shares: an
ejection published by another replica appears in `/admin/state` of this one (docs/operations.md,
the admin API). Two real `router serve` daemons on one real Redis.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from tests.conftest import FakeProviderFactory
from tests.scaleout.conftest import RedisServer
from tests.scaleout.fleet import redis_state
from tests.support.daemon import DaemonProcess, free_port
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, env_with_keys, policy_text, provider_block, route_block

CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def replica_policy(down_url: str, up_url: str, redis: RedisServer, admin_port: int) -> str:
    providers = {"down": provider_block(down_url, breaker={"consecutive_failures": 1, "base_ejection_s": 30,
                                                           "max_ejection_s": 30}),
                 "up": provider_block(up_url)}
    return policy_text(providers, {"chat": route_block(("down", "m"), ("up", "m"))},
                       clients=[{"name": "web", "key_env": CLIENT_ENV}], state=redis_state(redis, 2),
                       server={"admin": {"port": admin_port}})


async def test_a_replica_shows_the_backend_and_an_ejection_another_replica_published(
        redis_server: RedisServer, fake_provider: FakeProviderFactory, tmp_path: Path) -> None:
    down, up = await fake_provider("down"), await fake_provider("up")
    down_url = down.base_url
    await down.stop()  # connection refused: the first replica ejects it on its first request
    admin_one, admin_two = free_port(), free_port()
    env = env_with_keys()
    async with DaemonProcess(replica_policy(down_url, up.base_url, redis_server, admin_one), tmp_path, env=env,
                             name="one") as one, \
            DaemonProcess(replica_policy(down_url, up.base_url, redis_server, admin_two), tmp_path, env=env,
                          name="two"), \
            aiohttp.ClientSession() as session:
        async with session.post(one.chat_url, json=CHAT, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
            assert r.status == 200 and r.headers["x-router-provider"] == "up"
        state: dict[str, Any] = {}
        for _ in range(40):  # replicas sync health every 250 ms
            async with session.get(f"http://127.0.0.1:{admin_two}/admin/state") as response:
                state = await response.json()
            if state["providers"]["down"]["breaker"] == "open":
                break
            await asyncio.sleep(0.1)
    backend = state["state_backend"]
    assert backend["backend"] == "redis" and backend["up"] is True
    assert any(entry["field"] == "eject:down/m" and entry["for_s"] > 20 for entry in backend["fleet"])
    assert state["providers"]["down"]["breaker"] == "open"  # learnt from the other replica
    assert state["providers"]["down"]["status"] == "red"
    assert state["providers"]["down"]["recent"]["attempts"] == 0  # this replica never tried it
    assert redis_server.url not in str(state)  # the Redis URL may hold a password: never shown
