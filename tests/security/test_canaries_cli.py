"""The real processes: `router serve` (at DEBUG, every logger) and `router check` / `explain`.

The subprocess daemon serves a set of scenarios, is reloaded with a broken file and
a good one (SIGHUP), and stopped (SIGTERM); then its whole stdout (the access log)
and stderr (operational logs) go to the leak watch, as do the answers it gave and
the output of every CLI command.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from router.mock import Status, Stream
from tests.security.canaries import ALPHA_KEY, BETA_KEY, CANARY_ENV, GAMMA_KEY, WEB_KEY, LeakWatch
from tests.security.conftest import WatchedHttp
from tests.security.scenarios import (
    assert_provider_saw_only_its_own_key,
    echoing_status,
    error_event,
    policy_yaml,
    sse,
    sse_answer,
)
from tests.server.helpers import chat_body
from tests.support.daemon import REPO_ROOT, DaemonProcess

WEB = {"Authorization": f"Bearer {WEB_KEY}"}
# The environment of the processes: the canaries, and nothing else that looks like a key.
BASE_ENV = {name: value for name, value in os.environ.items() if not name.startswith("SEC_")}


Spawn = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def spawn(tmp_path: Path, leak_watch: LeakWatch) -> AsyncIterator[Spawn]:
    """Start `router serve` at DEBUG on a policy text; at the end stop it and watch its output."""
    started: list[DaemonProcess] = []

    async def start(text: str, *, expect_ready: bool = True) -> DaemonProcess:
        process = DaemonProcess(text, tmp_path, env=CANARY_ENV, base_env=BASE_ENV, args=("--log-level", "debug"),
                                module="tests.security.debug_serve", name=f"daemon{len(started)}")
        started.append(process)
        await process.spawn()
        if expect_ready:
            await process.wait_ready(within_s=15.0)
        return process

    try:
        yield start
    finally:
        for process in started:
            await process.kill()
    for process in started:
        leak_watch.add(f"daemon {process.policy_path.name} stdout (access log)", process.stdout())
        leak_watch.add(f"daemon {process.policy_path.name} stderr", process.stderr())


async def wait_for_stderr(process: DaemonProcess, text: str, within_s: float = 3.0) -> None:
    for _ in range(int(within_s / 0.05)):
        if text in process.stderr():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {within_s}s; stderr:\n{process.stderr()[-2000:]}")


async def test_the_daemon_process_at_debug_level_leaks_nothing(spawn: Spawn, fake_provider,
                                                               watched_http: WatchedHttp) -> None:
    alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
    beta = await fake_provider("beta", api_key=BETA_KEY)
    gamma = await fake_provider("gamma")
    good = policy_yaml(alpha, beta, gamma)
    daemon = await spawn(good)
    chat = daemon.url("/v1/chat/completions")

    assert (await watched_http.post(chat, json=chat_body(), headers=WEB)).status == 200
    assert (await watched_http.post(chat, json=chat_body(stream=True), headers=WEB)).status == 200
    for key in (f"{WEB_KEY}x", ALPHA_KEY, WEB_KEY[:8]):
        assert (await watched_http.post(chat, json=chat_body(), headers={"Authorization": f"Bearer {key}"})
                ).status == 401
    alpha.script(echoing_status(400, "content_policy_violation", ALPHA_KEY),
                 echoing_status(500, "server_error", ALPHA_KEY),
                 sse_answer(sse(error_event("invalid_request_error", ALPHA_KEY, 400)), ALPHA_KEY),
                 Status(302, body=b"", headers={"Location": f"http://127.0.0.1:1/?k={ALPHA_KEY}"}),
                 Stream(cut_after=1))
    for stream in (False, False, True, False, True):
        answer = await watched_http.post(chat, json=chat_body(model="solo", stream=stream), headers=WEB)
        assert answer.status in (200, 400, 502), answer.body
    gamma.set_default(echoing_status(401, "invalid_api_key", GAMMA_KEY))
    assert (await watched_http.post(chat, json=chat_body(model="bad"), headers=WEB)).status == 200
    for path in ("/v1/models", "/metrics", "/readyz", "/healthz"):
        assert (await watched_http.get(daemon.url(path), headers=WEB)).status == 200

    leaking = good.replace("api_key_env: SEC_ALPHA_KEY", f"api_key_env: {ALPHA_KEY}")
    daemon.policy_path.write_text(leaking, encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for_stderr(daemon, "policy reload rejected")
    daemon.policy_path.write_text(good, encoding="utf-8")
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for_stderr(daemon, "policy reloaded")
    assert (await watched_http.post(chat, json=chat_body(), headers=WEB)).status == 200
    await watched_http.get(daemon.url("/metrics"))

    daemon.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(daemon.proc.wait(), 10) == 0
    stderr = daemon.stderr()
    assert " DEBUG router.server: event loop: " in stderr  # the watch really saw a debug-level run
    assert "invalid_api_key" in daemon.stdout() or "content_policy" in daemon.stdout()
    assert_provider_saw_only_its_own_key(alpha, ALPHA_KEY)
    assert_provider_saw_only_its_own_key(gamma, GAMMA_KEY)


@pytest.mark.slow
async def test_startup_warnings_and_refusals(spawn: Spawn, fake_provider, watched_http: WatchedHttp) -> None:
    alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
    open_mode = await spawn(policy_yaml(alpha, alpha, alpha, clients=False))
    answer = await watched_http.post(open_mode.url("/v1/chat/completions"), json=chat_body(model="solo"),
                                     headers={"Authorization": f"Bearer {WEB_KEY}"})
    assert answer.status == 200
    open_mode.proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(open_mode.proc.wait(), 10) == 0
    assert "dev mode" in open_mode.stderr()

    broken = policy_yaml(alpha, alpha, alpha).replace("key_env: SEC_WEB_KEY", f"key_env: {WEB_KEY}")
    refused = await spawn(broken, expect_ready=False)
    assert await asyncio.wait_for(refused.proc.wait(), 10) == 2
    assert "cannot start" in refused.stderr() and "clients[0].key_env" in refused.stderr()


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=30, env={**BASE_ENV, **CANARY_ENV})


@pytest.mark.slow
def test_check_and_explain_print_no_secret(tmp_path: Path, leak_watch: LeakWatch) -> None:
    good = policy_yaml("https://alpha.example/v1", "https://beta.example/v1", "https://gamma.example/v1")
    good = good.replace("supports_prefill: true", "supports_prefill: true\n    headers: {X-Team: search-team}", 1)
    mistakes = {
        "pasted-provider-key": good.replace("api_key_env: SEC_BETA_KEY", f"api_key_env: {BETA_KEY}"),
        "pasted-client-key": good.replace("key_env: SEC_WEB_KEY", f"key_env: {WEB_KEY}"),
        "credentials-in-url": good.replace("https://alpha.example", f"https://k:{ALPHA_KEY}@alpha.example"),
        "key-in-a-query": good.replace("https://alpha.example/v1", f"https://alpha.example/v1?key={ALPHA_KEY}"),
        "key-as-authorization": good.replace("X-Team: search-team", f"Authorization: Bearer {ALPHA_KEY}"),
        "key-with-a-newline": good.replace("X-Team: search-team", f'X-Key: "{ALPHA_KEY}\\n"'),
        "key-under-a-tag": good + f"extra: !!float {GAMMA_KEY}\n",
    }
    paths = []
    for name, text in {"good": good, **mistakes}.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8")
        paths.append(str(path))

    results = {
        "check all": run_cli("check", *paths),
        "check --skip-env all": run_cli("check", "--skip-env", *paths),
        **{f"explain {route}": run_cli("explain", "-c", paths[0], route) for route in ("chat", "bad", "x:echo")},
    }
    for command, result in results.items():
        leak_watch.add(f"`router {command}` stdout", result.stdout)
        leak_watch.add(f"`router {command}` stderr", result.stderr)

    check = results["check all"]
    assert check.returncode == 1
    assert f"{paths[0]}: ok" in check.stdout
    assert check.stderr.count("error: ") == len(mistakes)  # each file refused, for its own mistake
    for explained in ("explain chat", "explain bad", "explain x:echo"):
        assert results[explained].returncode == 0 and "tier 0:" in results[explained].stdout
