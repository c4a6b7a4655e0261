"""The real `router serve` process: graceful shutdown, SIGHUP and --watch reloads.

The fake providers run in the test process on loopback; the daemon is a subprocess
started by the `cli_daemon` fixture (always killed at teardown).
"""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from router.mock import Hang, Ok
from tests.server.conftest import CliFactory
from tests.server.helpers import chat_body, sse_data, sse_text
from tests.support.daemon import DaemonProcess
from tests.support.policies import policy_text, provider_block, route_block

DRAIN_S = 4.0


def two_route_text(slow, streamy, *, drain_s: float = DRAIN_S, extra_routes: dict | None = None) -> str:
    return policy_text({"slow": provider_block(slow), "streamy": provider_block(streamy)},
                       {"chat": route_block(("slow", "slow-model")), "stream": route_block(("streamy", "s-model")),
                        **(extra_routes or {})},
                       server={"drain_timeout_s": drain_s})


async def listed_models(http: aiohttp.ClientSession, daemon: DaemonProcess) -> list[str]:
    async with http.get(daemon.url("/v1/models")) as response:
        assert response.status == 200
        return [item["id"] for item in (await response.json())["data"]]


async def wait_for_models(http: aiohttp.ClientSession, daemon: DaemonProcess, expected: str,
                          within_s: float) -> float:
    """Seconds until `expected` is listed; fails after `within_s`."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if expected in await listed_models(http, daemon):
            return time.monotonic() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"{expected!r} not listed within {within_s}s; stderr:\n{daemon.stderr()}")


async def wait_for_stderr(daemon: DaemonProcess, text: str, within_s: float) -> None:
    for _ in range(int(within_s / 0.05)):
        if text in daemon.stderr():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not logged within {within_s}s; stderr:\n{daemon.stderr()}")


async def refused_within(port: int, within_s: float) -> bool:
    """True once a new TCP connection to the port is refused."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            return True
        writer.close()
        await asyncio.sleep(0.02)
    return False


@pytest.mark.slow
async def test_sigterm_drains_in_flight_request_and_stream_then_exits_0(cli_daemon: CliFactory,
                                                                        fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Ok(content="worth the wait", delay_s=1.0))
    streamy.set_default(Ok(content="0123456789", chunks=5, interval_s=0.25))
    daemon = await cli_daemon(two_route_text(slow, streamy))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        async def slow_request() -> tuple[int, dict]:
            async with http.post(daemon.url("/v1/chat/completions"), json=chat_body()) as response:
                return response.status, await response.json()

        async def stream_request() -> tuple[int, list[str]]:
            async with http.post(daemon.url("/v1/chat/completions"),
                                 json=chat_body(model="stream", stream=True)) as response:
                return response.status, sse_data(await response.read())

        in_flight = asyncio.gather(slow_request(), stream_request())
        await slow.wait_for_hits(1, within_s=3)
        await streamy.wait_for_hits(1, within_s=3)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)

        refused = await refused_within(daemon.port, 1.0)
        (slow_status, slow_body), (stream_status, payloads) = await in_flight
        code = await daemon.wait_exit(DRAIN_S + 2)

    assert code == 0, daemon.stderr()
    assert time.monotonic() - signalled < DRAIN_S + 2
    assert refused, "new connections were still accepted after SIGTERM"
    assert slow_status == 200 and slow_body["choices"][0]["message"]["content"] == "worth the wait"
    assert stream_status == 200 and payloads[-1] == "[DONE]" and sse_text(payloads) == "0123456789"
    assert "draining" in daemon.stderr() and "stopped" in daemon.stderr()


async def test_sigterm_on_an_idle_daemon_exits_0_at_once(cli_daemon: CliFactory, fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    daemon = await cli_daemon(two_route_text(slow, streamy))

    signalled = time.monotonic()
    daemon.proc.send_signal(signal.SIGTERM)

    assert await daemon.wait_exit(2.0) == 0
    assert time.monotonic() - signalled < 1.5


@pytest.mark.slow
async def test_sigint_drains_like_sigterm(cli_daemon: CliFactory, fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Ok(delay_s=0.5))
    daemon = await cli_daemon(two_route_text(slow, streamy))

    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(daemon.url("/v1/chat/completions"), json=chat_body()))
        await slow.wait_for_hits(1, within_s=3)
        daemon.proc.send_signal(signal.SIGINT)
        async with await request as response:
            status = response.status
            await response.read()

    assert status == 200
    assert await daemon.wait_exit(DRAIN_S + 2) == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.slow
async def test_a_second_signal_during_the_drain_does_not_cut_it(cli_daemon: CliFactory, fake_provider,
                                                                sig: signal.Signals) -> None:
    """Ctrl-C or a group-wide SIGTERM under `--workers` reaches a worker twice (directly and from
    the supervisor); the second one used to kill it mid-drain with the default action."""
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Ok(delay_s=0.8))
    daemon = await cli_daemon(two_route_text(slow, streamy))

    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(daemon.url("/v1/chat/completions"), json=chat_body()))
        await slow.wait_for_hits(1, within_s=3)
        daemon.proc.send_signal(sig)
        await wait_for_stderr(daemon, "draining:", within_s=5)
        daemon.proc.send_signal(sig)
        async with await request as response:
            status = response.status
            await response.read()

    assert status == 200
    assert await daemon.wait_exit(DRAIN_S + 2) == 0, daemon.stderr()
    assert "Traceback" not in daemon.stderr()


@pytest.mark.slow
async def test_a_request_outliving_the_drain_timeout_does_not_hold_the_exit(cli_daemon: CliFactory,
                                                                            fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Hang())
    daemon = await cli_daemon(two_route_text(slow, streamy, drain_s=1.5))

    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(daemon.url("/v1/chat/completions"), json=chat_body()))
        await slow.wait_for_hits(1, within_s=3)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await daemon.wait_exit(1.5 + 2)
        exited = time.monotonic() - signalled
        try:
            async with await request as response:
                await response.read()
        except aiohttp.ClientError:
            pass  # the connection was closed under it: expected

    assert code == 0, daemon.stderr()
    assert exited < 1.5 + 1.0, exited  # the drain timeout (not twice it, as aiohttp alone did), plus teardown
    await slow.wait_until(lambda: slow.hits[0].ended is not None, within_s=1.0)
    assert slow.hits[0].disconnected  # the upstream request was not left dangling


async def test_drain_timeout_zero_means_exit_without_waiting(cli_daemon: CliFactory, fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Hang())
    daemon = await cli_daemon(two_route_text(slow, streamy, drain_s=0))

    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(daemon.url("/v1/chat/completions"), json=chat_body()))
        await slow.wait_for_hits(1, within_s=3)
        signalled = time.monotonic()
        daemon.proc.send_signal(signal.SIGTERM)
        code = await daemon.wait_exit(2.0)
        exited = time.monotonic() - signalled
        try:
            async with await request as response:
                await response.read()
        except aiohttp.ClientError:
            pass

    assert code == 0, f"still running 2 s after SIGTERM with drain_timeout_s: 0; stderr:\n{daemon.stderr()}"
    assert exited < 1.5


async def test_sighup_with_a_valid_changed_policy_adds_the_new_route(cli_daemon: CliFactory, fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    daemon = await cli_daemon(two_route_text(slow, streamy))

    async with aiohttp.ClientSession() as http:
        assert await listed_models(http, daemon) == ["chat", "stream"]
        daemon.write_policy(two_route_text(slow, streamy, extra_routes={"fresh": route_block(("streamy", "f"))}))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for_models(http, daemon, "fresh", within_s=2.0)
        async with http.post(daemon.url("/v1/chat/completions"), json=chat_body(model="fresh")) as response:
            body = await response.json()

    assert response.status == 200 and body["model"] == "f"
    assert daemon.proc.returncode is None
    assert "policy reloaded" in daemon.stderr()


async def test_sighup_with_an_invalid_file_keeps_the_old_policy_serving(cli_daemon: CliFactory,
                                                                       fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    good = two_route_text(slow, streamy)
    daemon = await cli_daemon(good)

    daemon.write_policy(good.replace("deadline_s: 10", "deadline_s: -1", 1) + "\nnot_a_key: 1\n")
    daemon.proc.send_signal(signal.SIGHUP)
    await wait_for_stderr(daemon, "reload rejected", within_s=2.0)

    async with aiohttp.ClientSession() as http:
        assert await listed_models(http, daemon) == ["chat", "stream"]
        async with http.post(daemon.url("/v1/chat/completions"), json=chat_body()) as response:
            assert response.status == 200
        async with http.get(daemon.url("/metrics")) as response:
            metrics = await response.text()
        async with http.get(daemon.url("/readyz")) as response:
            assert response.status == 200

    stderr = daemon.stderr()
    assert "policy reload rejected, the previous policy keeps serving" in stderr
    assert str(daemon.policy_path) in stderr and "routes.chat.deadline_s" in stderr
    assert daemon.proc.returncode is None
    assert 'llm_router_config_reloads_total{result="failure"} 1.0' in metrics


@pytest.mark.slow
async def test_an_in_flight_request_finishes_on_the_policy_it_started_with(cli_daemon: CliFactory,
                                                                           fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    slow.set_default(Ok(delay_s=0.8, content="old snapshot"))
    daemon = await cli_daemon(two_route_text(slow, streamy))

    async with aiohttp.ClientSession() as http:
        request = asyncio.ensure_future(http.post(daemon.url("/v1/chat/completions"), json=chat_body()))
        await slow.wait_for_hits(1, within_s=3)
        # The new policy drops the `chat` route altogether.
        daemon.write_policy(policy_text({"streamy": provider_block(streamy)},
                                        {"other": route_block(("streamy", "o"))}))
        daemon.proc.send_signal(signal.SIGHUP)
        await wait_for_models(http, daemon, "other", within_s=2.0)
        async with await request as response:
            status, body = response.status, await response.json()
        async with http.post(daemon.url("/v1/chat/completions"), json=chat_body()) as after:
            await after.read()

    assert status == 200 and body["choices"][0]["message"]["content"] == "old snapshot"
    assert after.status == 404  # new requests see the new policy


@pytest.mark.slow
async def test_watch_picks_up_a_file_change_within_two_seconds(cli_daemon: CliFactory, fake_provider) -> None:
    slow, streamy = await fake_provider("slow"), await fake_provider("streamy")
    daemon = await cli_daemon(two_route_text(slow, streamy), "--watch")

    async with aiohttp.ClientSession() as http:
        assert "watched" not in await listed_models(http, daemon)
        daemon.write_policy(two_route_text(slow, streamy, extra_routes={"watched": route_block(("slow", "w"))}))
        took = await wait_for_models(http, daemon, "watched", within_s=3.0)

    assert took < 2.2
    assert daemon.proc.returncode is None
