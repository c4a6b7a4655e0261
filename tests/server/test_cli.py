"""`router check`, `router explain`, `router mock` and `router serve` start-up failures, as subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest

from tests.server.helpers import chat_body
from tests.support.daemon import REPO_ROOT
from tests.support.policies import CANARY_ENV, CANARY_KEY, free_port, policy_text

GOOD = policy_text(
    {"aimo": {"base_url": "https://devnet.aimo.network/api/v1", "api_key_env": "AIMO_TEST_KEY"},
     "asi1": {"base_url": "https://api.asi1.ai/v1"}},
    {"chat": {"targets": [
        {"provider": "aimo", "model": "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3", "priority": 0},
        {"provider": "asi1", "model": "asi1-mini", "priority": 1}]},
     "*:deepseek-chat-v3": {"targets": [{"provider": "aimo", "model": "{model}"}]}})
BAD = GOOD.replace("priority: 1\n", "priority: 1\n    retry:\n      max_attempts: 0\n")


def cli(*args: str, env: dict[str, str] | None = None, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "router.cli", *args], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=timeout,
                          env={**{k: v for k, v in os.environ.items() if k != "AIMO_TEST_KEY"}, **(env or {})})


def policy_file(tmp_path: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_check_accepts_a_good_file_and_lists_its_routes(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD)

    result = cli("check", path, env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 0, result.stderr
    assert f"{path}: ok (2 providers, 2 routes, 0 clients)" in result.stdout
    assert "aimo:8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3@p0" in result.stdout
    assert "asi1:asi1-mini@p1" in result.stdout
    assert "'*:deepseek-chat-v3'" in result.stdout


def test_python_dash_m_router_is_the_same_command(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD)
    result = subprocess.run([sys.executable, "-m", "router", "check", path], capture_output=True, text=True,
                            cwd=REPO_ROOT, timeout=20, env={**os.environ, "AIMO_TEST_KEY": "k"})
    assert result.returncode == 0, result.stderr
    assert f"{path}: ok (2 providers, 2 routes, 0 clients)" in result.stdout


def test_check_rejects_a_bad_file_naming_the_file_and_key_path(tmp_path: Path) -> None:
    path = policy_file(tmp_path, BAD)

    result = cli("check", path, env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 1
    assert f"{path}: routes.chat.retry.max_attempts: must be >= 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr
    assert "ok (" not in result.stdout


def test_check_rejects_unknown_keys_with_a_suggestion(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD.replace("api_key_env:", "api_key_evn:"))

    result = cli("check", "--skip-env", path)

    assert result.returncode == 1
    assert "providers.aimo.api_key_evn" in result.stderr
    assert "api_key_env" in result.stderr  # the suggestion


def test_check_of_several_files_fails_if_any_fails(tmp_path: Path) -> None:
    good, bad = policy_file(tmp_path, GOOD, "good.yaml"), policy_file(tmp_path, BAD, "bad.yaml")

    result = cli("check", good, bad, env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 1
    assert f"{good}: ok" in result.stdout
    assert f"{bad}: routes.chat.retry.max_attempts" in result.stderr


@pytest.mark.slow
def test_check_requires_key_variables_unless_skip_env(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD)

    missing = cli("check", path)
    skipped = cli("check", "--skip-env", path)

    assert missing.returncode == 1
    assert "providers.aimo.api_key_env: environment variable AIMO_TEST_KEY is not set" in missing.stderr
    assert skipped.returncode == 0, skipped.stderr
    assert f"{path}: ok" in skipped.stdout


@pytest.mark.parametrize("skip_env", [False, True])
def test_check_shows_how_each_provider_is_reached(tmp_path: Path, skip_env: bool) -> None:
    # The proxy comes from the environment (also under --skip-env: it is no secret), its password never
    # printed; verification turned off is said out loud.
    insecure = "    tls:\n      verify: false\n      allow_insecure: true\n"
    text = GOOD.replace("    base_url: https://api.asi1.ai/v1\n", "    base_url: https://api.asi1.ai/v1\n" + insecure)
    path = policy_file(tmp_path, text)
    env = {"AIMO_TEST_KEY": "k", "HTTPS_PROXY": "http://egress:pa55word@proxy.internal:3128",
           "NO_PROXY": "api.asi1.ai"}
    result = cli("check", *(["--skip-env"] if skip_env else []), path, env=env)
    assert result.returncode == 0, result.stderr
    assert "provider 'aimo' through the proxy http://proxy.internal:3128 (from HTTPS_PROXY)" in result.stdout
    assert "provider 'asi1' through" not in result.stdout  # NO_PROXY
    assert "provider 'asi1': TLS certificate verification is OFF (tls.allow_insecure)" in result.stdout
    assert "pa55word" not in result.stdout + result.stderr
    broken = cli("check", path, env={**env, "HTTPS_PROXY": "https://egress:pa55word@proxy.internal:3128"})
    assert broken.returncode == 1
    assert "providers.aimo: environment variable HTTPS_PROXY: only an http:// proxy is supported" in broken.stderr
    assert "pa55word" not in broken.stdout + broken.stderr


def test_check_never_prints_a_key_value(tmp_path: Path) -> None:
    path = policy_file(tmp_path, BAD.replace("AIMO_TEST_KEY", CANARY_ENV))

    result = cli("check", path, env={CANARY_ENV: CANARY_KEY})

    assert result.returncode == 1
    assert CANARY_KEY not in result.stdout + result.stderr


def test_check_of_a_missing_file_fails_cleanly(tmp_path: Path) -> None:
    result = cli("check", str(tmp_path / "nope.yaml"))

    assert result.returncode == 1
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_explain_prints_the_tiers_of_the_default_policy() -> None:
    result = cli("explain", "-c", "policies/default.yaml", "chat")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("route 'chat'")
    assert out.index("tier 0:") < out.index("demo-primary") < out.index("tier 1:") < out.index("demo-backup")
    assert "deadline 30s" in out and "retry: max_attempts 3" in out
    assert "prefill yes" in out  # the backup accepts a prefill


def test_explain_matches_a_glob_route_and_shows_the_forwarded_model(tmp_path: Path) -> None:
    path = policy_file(tmp_path, GOOD)

    result = cli("explain", "-c", path, "abc:deepseek-chat-v3", env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 0, result.stderr
    assert "route '*:deepseek-chat-v3' (matched by 'abc:deepseek-chat-v3')" in result.stdout
    assert "aimo model 'abc:deepseek-chat-v3'" in result.stdout


def test_explain_of_an_unknown_route_lists_the_routes() -> None:
    result = cli("explain", "-c", "policies/default.yaml", "no-such-route")

    assert result.returncode == 1
    assert "no route matches 'no-such-route'" in result.stderr and "chat" in result.stderr


def test_no_command_prints_help() -> None:
    result = cli()

    assert result.returncode == 0
    assert "serve" in result.stdout and "check" in result.stdout


def test_serve_with_an_invalid_policy_exits_2_with_the_error(tmp_path: Path) -> None:
    path = policy_file(tmp_path, BAD)

    result = cli("serve", "-c", path, "--port", str(free_port()), env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 2
    assert "routes.chat.retry.max_attempts: must be >= 1, got 0" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_on_a_busy_port_exits_1(tmp_path: Path) -> None:
    import socket

    path = policy_file(tmp_path, GOOD)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = cli("serve", "-c", path, "--port", str(port), env={"AIMO_TEST_KEY": "k"})

    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_mock_with_a_bad_error_rate_exits_2() -> None:
    result = cli("mock", "--port", str(free_port()), "--error-rate", "teapot=0.5")

    assert result.returncode == 2
    assert "teapot" in result.stderr


async def test_mock_serves_503s_at_error_rate_one(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "mock.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "mock", "--port", str(port), "--error-rate", "503=1.0",
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
    try:
        url = f"http://127.0.0.1:{port}/v1/chat/completions"
        statuses = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
            for _ in range(200):  # wait for it to listen
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with http.post(url, json=chat_body(model="m")) as response:
                        statuses.append(response.status)
                        body = await response.json()
                    break
                await asyncio.sleep(0.05)
            for _ in range(4):
                async with http.post(url, json=chat_body(model="m")) as response:
                    statuses.append(response.status)

        assert statuses == [503] * 5
        assert set(body["error"]) >= {"message", "type", "code"}
        assert f"at http://127.0.0.1:{port}/v1" in log.read_text(errors="replace")
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


def test_explain_shows_the_adaptive_strategy_the_hedge_and_the_health_probe(tmp_path: Path) -> None:
    path = tmp_path / "learning.yaml"
    path.write_text("""
providers:
  a: {base_url: "http://127.0.0.1:9/v1", health_probe: {interval_s: 3}}
  b: {base_url: "http://127.0.0.1:9/v1", health_probe: {body: {model: m, messages: [{role: user, content: hi}]}}}
routes:
  chat:
    strategy: adaptive
    adaptive: {half_life_s: 4, explore_percent: 2}
    hedge: {after_quantile: 0.9, max_percent: 10}
    targets: [{provider: a, model: m}, {provider: b, model: m}]
  plain:
    targets: [{provider: a, model: m}]
""")
    out = cli("explain", "-c", str(path), "chat").stdout
    assert "strategy adaptive" in out and "half-life 4s, explore 2%" in out
    assert "hedge: a second target after the p90 of the target's time to first byte (until then 1s)" in out
    assert "at most 10% of requests over 10s" in out
    assert "GET http://127.0.0.1:9/v1/models every 3s" in out
    assert "POST http://127.0.0.1:9/v1/chat/completions (a small chat body) every 5s" in out
    assert "hedge: off" in cli("explain", "-c", str(path), "plain").stdout
