"""Fixtures for the daemon tests.

- `daemon(policy)`: the daemon in the test's event loop (tests/support/daemon.py). Every answer it
  sends, from either front, is recorded, and at teardown none of them, nor any captured log line,
  may carry a traceback or the providers' key.
- `cli_daemon(policy_text, *args)`: the real `python -m router.cli serve` in a subprocess,
  for signals, reloads and shutdown; always killed at teardown.
- `http`: an aiohttp client session.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from router.policy.model import Policy
from tests.server.helpers import assert_no_leak
from tests.support.daemon import DaemonProcess, InProcessDaemon, start_in_process
from tests.support.policies import CANARY_KEY, env_with_keys


def pytest_configure(config: pytest.Config) -> None:
    # When a hypothesis test fails, hypothesis imports libcst to write a patch, and libcst imports
    # the deprecated mypy_extensions.TypedDict; with warnings as errors that turned a clean
    # "Falsifying example" report into a pytest INTERNALERROR.
    config.addinivalue_line("filterwarnings",
                            "ignore:mypy_extensions.TypedDict is deprecated:DeprecationWarning")


DaemonFactory = Callable[..., Awaitable[InProcessDaemon]]


@pytest.fixture
async def daemon(caplog: pytest.LogCaptureFixture) -> AsyncIterator[DaemonFactory]:
    """`await daemon(policy)` starts the app on a free loopback port and returns an `InProcessDaemon`."""
    caplog.set_level(logging.DEBUG, logger="router")
    started: list[InProcessDaemon] = []

    async def start(policy: Policy, **router_kwargs: Any) -> InProcessDaemon:
        handle = await start_in_process(policy, **router_kwargs)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in reversed(started):
            await handle.stop()
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

CliFactory = Callable[..., Awaitable[DaemonProcess]]


@pytest.fixture
async def cli_daemon(tmp_path: Path) -> AsyncIterator[CliFactory]:
    """`await cli_daemon(policy_yaml, "--watch")` runs `python -m router.cli serve` until ready."""
    handles: list[DaemonProcess] = []

    async def start(text: str, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        handle = DaemonProcess(text, tmp_path, env={**env_with_keys(), **(env or {})}, args=args,
                               name=f"daemon{len(handles)}")
        handles.append(handle)
        await handle.start(within_s=15.0)
        return handle

    try:
        yield start
    finally:
        for handle in handles:
            await handle.kill()
    for handle in handles:  # the daemon's own output: no traceback, no provider key
        assert_no_leak(handle.stderr(), handle.stdout())
