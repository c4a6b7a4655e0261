"""Fixtures for the daemon tests.

- `daemon(policy)`: the real app (`create_app(Router(policy))`) on 127.0.0.1, port 0, behind
  aiohttp's `AppRunner(handler_cancellation=True)` + the fast front's `FrontSite`, as `router serve`
  runs it. Every response body it sends (non-streamed), from either front, is recorded, and at teardown none of them,
  nor any captured log line, may carry a traceback or the providers' key.
- `cli_daemon(policy_text, *args)`: the real `python -m router.cli serve` in a subprocess,
  for signals, reloads and shutdown; always killed at teardown.
- `http`: an aiohttp client session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import aiohttp
import pytest
from aiohttp import web

from router.policy.model import Policy
from router.router import Router
from router.server import create_app
from router.server.context import CONTEXT, ServerContext
from router.server.front import FrontSite, Tap
from tests.server.helpers import CANARY_KEY, assert_no_leak, env_with_keys, free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def pytest_configure(config: pytest.Config) -> None:
    # When a hypothesis test fails, hypothesis imports libcst to write a patch, and libcst imports
    # the deprecated mypy_extensions.TypedDict; with warnings as errors that turned a clean
    # "Falsifying example" report into a pytest INTERNALERROR.
    config.addinivalue_line("filterwarnings",
                            "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


@dataclass(slots=True)
class Recorded:
    status: int
    headers: dict[str, str]
    body: bytes | None  # None for a streamed response


@dataclass(slots=True)
class Daemon:
    app: web.Application
    runner: web.AppRunner
    base_url: str  # http://127.0.0.1:PORT
    responses: list[Recorded] = field(default_factory=list)

    @property
    def state(self) -> ServerContext:
        return self.app[CONTEXT]

    @property
    def router(self) -> Router:
        return self.state.router

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"


def _tap(recorded: list[Recorded]) -> Any:
    """Outermost middleware: remembers what the daemon answered, to check it for leaks."""

    @web.middleware
    async def tap(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                  ) -> web.StreamResponse:
        response = await handler(request)
        body = response.body if isinstance(response, web.Response) else None
        recorded.append(Recorded(response.status, dict(response.headers),
                                 body if isinstance(body, bytes) else None))
        return response

    return tap


def _front_tap(recorded: list[Recorded]) -> Tap:
    """The same record for what the fast front answers itself (it bypasses aiohttp's middlewares)."""

    def tap(status: int, headers: Mapping[str, str], body: bytes | None) -> None:
        recorded.append(Recorded(status, dict(headers), body))

    return tap


DaemonFactory = Callable[..., Awaitable[Daemon]]


@pytest.fixture
async def daemon(caplog: pytest.LogCaptureFixture) -> AsyncIterator[DaemonFactory]:
    """`await daemon(policy)` starts the app on a free loopback port and returns a `Daemon`."""
    caplog.set_level(logging.DEBUG, logger="router")
    started: list[Daemon] = []

    async def start(policy: Policy, **router_kwargs: Any) -> Daemon:
        router = Router(policy, **router_kwargs)
        app = create_app(router)
        recorded: list[Recorded] = []
        app.middlewares.insert(0, _tap(recorded))
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await FrontSite(runner, "127.0.0.1", 0, tap=_front_tap(recorded)).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        handle = Daemon(app=app, runner=runner, base_url=f"http://{host}:{port}", responses=recorded)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in reversed(started):
            await handle.runner.cleanup()
    for handle in started:
        for response in handle.responses:
            assert_no_leak(response.body or b"", [f"{k}: {v}" for k, v in response.headers.items()])
    assert_logs_clean(caplog)


def assert_logs_clean(caplog: pytest.LogCaptureFixture) -> None:
    """The router's log lines carry no traceback, and no log line at all carries the provider key.

    (aiohttp's own `aiohttp.server` logger may log a traceback for a client's broken body; the
    daemon silences it in `setup_logging`, so only the key is checked there.)
    """
    records = [*caplog.get_records("setup"), *caplog.get_records("call")]
    lines = [caplog.handler.format(record) for record in records]
    assert_no_leak([line for record, line in zip(records, lines, strict=True) if record.name.startswith("router")])
    assert not any(CANARY_KEY in line for line in lines), "the provider key reached the logs"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session


# -- the real CLI in a subprocess ---------------------------------------------------------------


@dataclass(slots=True)
class CliDaemon:
    proc: asyncio.subprocess.Process
    port: int
    policy_path: Path
    stdout_path: Path
    stderr_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def stderr(self) -> str:
        return read_text(self.stderr_path)

    def stdout(self) -> str:
        return read_text(self.stdout_path)

    def write_policy(self, text: str) -> None:
        write_text(self.policy_path, text)

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after `timeout_s`."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        return None


def write_text(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")


def read_text(path: Path) -> str:
    return path.read_text(errors="replace")


def _open_log(path: Path) -> IO[bytes]:
    return path.open("wb")


async def wait_until_ready(url: str, proc: asyncio.subprocess.Process, stderr_path: Path,
                           within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                break
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"daemon not ready at {url} (exit code {proc.returncode}); stderr:\n"
                         f"{read_text(stderr_path)}")


CliFactory = Callable[..., Awaitable[CliDaemon]]


@pytest.fixture
async def cli_daemon(tmp_path: Path) -> AsyncIterator[CliFactory]:
    """`await cli_daemon(policy_yaml, "--watch")` runs `python -m router.cli serve` until ready."""
    procs: list[asyncio.subprocess.Process] = []
    files: list[IO[bytes]] = []
    handles: list[CliDaemon] = []

    async def start(text: str, *args: str, env: dict[str, str] | None = None) -> CliDaemon:
        index = len(procs)
        policy_path = tmp_path / f"policy{index}.yaml"
        write_text(policy_path, text)
        stdout_path, stderr_path = tmp_path / f"stdout{index}.log", tmp_path / f"stderr{index}.log"
        out, err = _open_log(stdout_path), _open_log(stderr_path)
        files.extend((out, err))
        port = free_port()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "router.cli", "serve", "-c", str(policy_path), "--port", str(port), *args,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO_ROOT,
            env={**os.environ, **env_with_keys(), **(env or {})})
        procs.append(proc)
        handle = CliDaemon(proc=proc, port=port, policy_path=policy_path, stdout_path=stdout_path,
                           stderr_path=stderr_path)
        handles.append(handle)
        await wait_until_ready(handle.url("/readyz"), proc, stderr_path)
        return handle

    try:
        yield start
    finally:
        for proc in procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
            await proc.wait()
        for file in files:
            file.close()
    for handle in handles:  # the daemon's own output: no traceback, no provider key
        assert_no_leak(handle.stderr(), handle.stdout())
