"""The admin listener through the real `router serve`: its key, `/admin/state`, drain / restore / reload,
`router status`, and what it must never show.

One daemon per test (a subprocess, with fake providers on loopback), so each test sees the listener
exactly as an operator would.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.errors import PolicyError
from router.mock import Ok
from router.policy.loader import parse_policy
from tests.conftest import FakeProviderFactory
from tests.support.daemon import REPO_ROOT, DaemonProcess, free_port
from tests.support.policies import (
    CANARY_ENV,
    CANARY_KEY,
    CLIENT_ENV,
    CLIENT_KEY,
    env_with_keys,
    policy_text,
    provider_block,
    route_block,
)

pytestmark = pytest.mark.slow  # a `router serve` per test

ADMIN_KEY = "admin-key-5f0c2b7e91d4-very-secret"
ADMIN_ENV = "TEST_ROUTER_ADMIN_KEY"
HEADER_SECRET = "x-custom-header-secret-value-77"
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "a prompt that must stay private"}]}


def admin_policy(a_url: str, b_url: str, admin_port: int, *, keyed: bool = True) -> str:
    providers = {"a": provider_block(a_url, headers={"X-Org": HEADER_SECRET}), "b": provider_block(b_url)}
    routes = {"chat": route_block(("a", "m"), ("b", "m"))}
    admin: dict[str, Any] = {"host": "127.0.0.1", "port": admin_port}
    if keyed:
        admin["key_env"] = ADMIN_ENV
    return policy_text(providers, routes, clients=[{"name": "web", "key_env": CLIENT_ENV}],
                       server={"admin": admin})


class Admin:
    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session, self.base = session, f"http://127.0.0.1:{port}"

    async def call(self, method: str, path: str, *, key: str | None = ADMIN_KEY,
                   **headers: str) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        if key is not None:
            headers["Authorization"] = f"Bearer {key}"
        async with self.session.request(method, self.base + path, headers=headers) as response:
            text = await response.text()
            body = json.loads(text) if response.content_type == "application/json" else text
            return response.status, body, response.headers


@pytest.fixture
async def daemon(fake_provider: FakeProviderFactory, tmp_path: Path) -> AsyncIterator[tuple[DaemonProcess, Admin]]:
    a, b = await fake_provider("a"), await fake_provider("b")
    port = free_port()
    env = env_with_keys(**{ADMIN_ENV: ADMIN_KEY})
    async with DaemonProcess(admin_policy(a.base_url, b.base_url, port), tmp_path, env=env) as process, \
            aiohttp.ClientSession() as session:
        process.fakes = (a, b)  # type: ignore[attr-defined]
        yield process, Admin(session, port)


async def chat(session: aiohttp.ClientSession, process: DaemonProcess) -> tuple[int, str]:
    async with session.post(process.chat_url, json=CHAT, headers={"Authorization": f"Bearer {CLIENT_KEY}"}) as r:
        await r.read()
        return r.status, r.headers.get("x-router-provider", "")


async def test_every_admin_call_but_the_page_needs_the_key_compared_in_full(
        daemon: tuple[DaemonProcess, Admin]) -> None:
    _, admin = daemon
    for method, path in (("GET", "/admin/state"), ("POST", "/admin/providers/a/drain"), ("POST", "/admin/reload")):
        for key in (None, "", "wrong", ADMIN_KEY[:-1], ADMIN_KEY + "x"):
            status, body, headers = await admin.call(method, path, key=key)
            assert status == 401, (method, path, key)
            assert body["error"]["code"] == "invalid_admin_key"
            assert headers["WWW-Authenticate"].startswith("Bearer")
    status, page, _ = await admin.call("GET", "/admin/", key=None)
    assert status == 200 and "<title>llm-router status</title>" in page
    status, body, _ = await admin.call("GET", "/admin/state")
    assert status == 200 and set(body["providers"]) == {"a", "b"}


async def test_the_state_shows_providers_routes_clients_and_budgets_and_never_a_secret(
        daemon: tuple[DaemonProcess, Admin]) -> None:
    process, admin = daemon
    async with aiohttp.ClientSession() as session:
        assert await chat(session, process) == (200, "a")
    _, state, _ = await admin.call("GET", "/admin/state")
    assert state["policy"]["path"] == str(process.policy_path)
    assert len(state["policy"]["sha256"]) == 64 and state["policy"]["last_reload_error"] is None
    a = state["providers"]["a"]
    assert a["breaker"] == "closed" and a["status"] == "green" and a["in_flight"] == 0 and not a["drained"]
    assert a["recent"]["attempts"] == 1 and a["recent"]["ttfb_p50_s"] > 0
    assert set(a["targets"]) == {"a/m"}
    assert [t["provider"] for t in state["routes"]["chat"]["targets"]] == ["a", "b"]
    assert all(t["eligible"] for t in state["routes"]["chat"]["targets"])
    assert set(state["clients"]) == {"web"}
    assert state["budgets"]["retry"]["requests"] >= 1
    assert state["state_backend"] == {"backend": "memory"}
    text = json.dumps(state)
    for secret in (CANARY_KEY, CANARY_KEY[:8], CLIENT_KEY, CLIENT_KEY[:8], ADMIN_KEY, ADMIN_KEY[:8], HEADER_SECRET,
                   "a prompt that must stay private"):
        assert secret not in text


async def test_drain_stops_new_requests_lets_in_flight_finish_and_survives_a_reload(
        daemon: tuple[DaemonProcess, Admin]) -> None:
    process, admin = daemon
    a, _ = process.fakes  # type: ignore[attr-defined]
    a.script(Ok(delay_s=1.0))
    async with aiohttp.ClientSession() as session:
        slow = asyncio.create_task(chat(session, process))
        await a.wait_until(lambda: a.count == 1, within_s=3.0)
        status, body, _ = await admin.call("POST", "/admin/providers/a/drain", **{"X-Operator": "alice"})
        assert status == 200 and body == {"provider": "a", "drained": True, "in_flight": 1}
        assert [await chat(session, process) for _ in range(3)] == [(200, "b")] * 3
        assert await slow == (200, "a")  # the request in flight when it was drained finished there
        status, _, _ = await admin.call("POST", "/admin/reload")
        assert status == 200
        assert await chat(session, process) == (200, "b")  # still drained after the reload
        _, state, _ = await admin.call("GET", "/admin/state")
        assert state["providers"]["a"]["drained"] and state["providers"]["a"]["status"] == "red"
        assert state["routes"]["chat"]["targets"][0]["status"] == "drained"
        status, body, _ = await admin.call("POST", "/admin/providers/a/restore")
        assert status == 200 and body["drained"] is False
        assert await chat(session, process) == (200, "a")
    assert a.count == 2
    log = process.stderr()
    assert "admin: drain provider a by 127.0.0.1 with the admin key (alice)" in log
    assert "admin: restore provider a by 127.0.0.1 with the admin key" in log
    assert ADMIN_KEY not in log


async def test_reload_answers_with_its_result_and_a_refused_one_keeps_the_old_policy(
        daemon: tuple[DaemonProcess, Admin]) -> None:
    process, admin = daemon
    good = process.policy_path.read_text()
    process.write_policy(good.replace("deadline_s: 10", "deadline_s: -1"))
    status, body, _ = await admin.call("POST", "/admin/reload")
    assert status == 422 and body["reloaded"] is False and "deadline_s" in body["error"]
    _, state, _ = await admin.call("GET", "/admin/state")
    assert "deadline_s" in state["policy"]["last_reload_error"]
    async with aiohttp.ClientSession() as session:
        assert (await chat(session, process))[0] == 200
    process.write_policy(good)
    status, body, _ = await admin.call("POST", "/admin/reload")
    assert status == 200 and body == {"reloaded": True, "sha256": body["sha256"], "error": None}


async def test_unknown_providers_and_paths_get_error_json(daemon: tuple[DaemonProcess, Admin]) -> None:
    _, admin = daemon
    status, body, _ = await admin.call("POST", "/admin/providers/nope/drain")
    assert status == 404 and body["error"]["code"] == "provider_not_found" and "a, b" in body["error"]["message"]
    status, body, _ = await admin.call("GET", "/admin/nothing-here")
    assert status == 404 and body["error"]["type"] == "invalid_request_error"
    status, body, _ = await admin.call("GET", "/admin/providers/a/drain")
    assert status == 405 and "error" in body


async def test_router_status_renders_the_providers_as_a_table(daemon: tuple[DaemonProcess, Admin]) -> None:
    _, admin = daemon
    await admin.call("POST", "/admin/providers/b/drain")
    url = admin.base
    env = {**os.environ, ADMIN_ENV: ADMIN_KEY}
    done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "router.cli", "status", "--url", url,
                                                    "--key-env", ADMIN_ENV], capture_output=True, text=True,
                                   cwd=REPO_ROOT, env=env, timeout=20)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["PROVIDER", "STATE", "IN", "FLIGHT", "TTFB", "P50/P99", "ERRORS/S", "THROTTLED",
                                "UNTIL"]
    assert lines[1].split()[:3] == ["a", "serving", "0"]
    assert lines[2].split()[:2] == ["b", "drained"]
    assert ADMIN_KEY not in done.stdout
    refused = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "router.cli", "status", "--url", url],
                                      capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=20)
    assert refused.returncode == 1 and "--key-env" in refused.stderr


def test_a_non_loopback_admin_listener_needs_a_key() -> None:
    text = policy_text({"a": provider_block("http://127.0.0.1:9/v1", keyed=False)},
                       {"chat": route_block(("a", "m"))}, server={"admin": {"host": "0.0.0.0"}})
    with pytest.raises(PolicyError) as info:
        parse_policy(text, source="admin.yaml")
    assert info.value.path == "server.admin.key_env"
    keyed = text.replace("host: 0.0.0.0", f"host: 0.0.0.0\n    key_env: {ADMIN_ENV}")
    admin = parse_policy(keyed, env={ADMIN_ENV: ADMIN_KEY}).server.admin
    assert admin is not None and admin.key == ADMIN_KEY and ADMIN_KEY not in repr(admin)


def test_the_admin_listener_refuses_several_workers(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(policy_text({"a": provider_block("http://127.0.0.1:9/v1", keyed=False)},
                                {"chat": route_block(("a", "m"))}, server={"admin": {"port": free_port()}}))
    done = subprocess.run([sys.executable, "-m", "router.cli", "serve", "-c", str(path), "--workers", "2",
                           "--port", str(free_port())], capture_output=True, text=True, cwd=REPO_ROOT, timeout=20,
                          env={**os.environ, CANARY_ENV: CANARY_KEY})
    assert done.returncode == 2
    assert "server.admin needs one process" in done.stderr
