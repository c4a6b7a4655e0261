"""The daemon, two ways: in the test's own event loop, or as the real `router serve` in a subprocess.

- `start_in_process(policy)`: `create_app(Router(policy))` on 127.0.0.1, port 0, behind aiohttp's
  `AppRunner(handler_cancellation=True)` and the fast front's `FrontSite`, as `router serve` runs it.
  Every answer either front sends is recorded (`responses`), for leak checks.
- `DaemonProcess`: `python -m router.cli serve` (or `tests.support.daemon_probe`, the same daemon
  that also reports its asyncio task count on SIGUSR2) in a subprocess on 127.0.0.1, for signals,
  reloads, shutdown and load; stdout (the access log) and stderr go to files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from router.policy.model import Policy
from router.router import Router
from router.server import create_app
from router.server.context import CONTEXT, ServerContext
from router.server.front import FrontSite, Tap, aiohttp_limits
from tests.support.load import Metrics, read_access_log, scrape

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- in the test's event loop -----------------------------------------------------------------------

@dataclass(slots=True)
class Recorded:
    status: int
    headers: dict[str, str]
    body: bytes | None  # None for a streamed answer


@dataclass(slots=True)
class InProcessDaemon:
    app: web.Application
    runner: web.AppRunner
    base_url: str  # http://127.0.0.1:PORT
    responses: list[Recorded] = field(default_factory=list)

    @property
    def context(self) -> ServerContext:
        return self.app[CONTEXT]

    @property
    def router(self) -> Router:
        return self.context.router

    @property
    def v1(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def stop(self) -> None:
        await self.runner.cleanup()


def _aiohttp_tap(recorded: list[Recorded]) -> Any:
    """Outermost middleware: remembers what aiohttp's side of the daemon answered."""

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


async def start_in_process(policy: Policy, *, front: bool = True, **router_kwargs: Any) -> InProcessDaemon:
    """The daemon's app around `Router(policy, **router_kwargs)` on a free loopback port; `stop()` it.
    `front=False` serves it with aiohttp's own TCPSite instead of the fast front: the reference for
    differential tests of what the fast front accepts."""
    router = Router(policy, **router_kwargs)
    app = create_app(router, observer=router_kwargs.get("observer"))
    recorded: list[Recorded] = []
    app.middlewares.insert(0, _aiohttp_tap(recorded))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0,
                           **aiohttp_limits(policy.server))
    await runner.setup()
    try:
        if front:
            await FrontSite(runner, "127.0.0.1", 0, tap=_front_tap(recorded)).start()
        else:
            await web.TCPSite(runner, "127.0.0.1", 0).start()
    except BaseException:
        await runner.cleanup()
        raise
    host, port = runner.addresses[0][:2]
    return InProcessDaemon(app=app, runner=runner, base_url=f"http://{host}:{port}", responses=recorded)


# -- the real command in a subprocess --------------------------------------------------------------

class DaemonProcess:
    """`router serve` in a subprocess on 127.0.0.1; killed on exit if still running.

    stdout (the access log) and stderr go to files in `workdir`."""

    def __init__(self, policy_text: str, workdir: Path, *, probe: bool = False,
                 env: Mapping[str, str] | None = None, args: Sequence[str] = (), port: int | None = None,
                 name: str = "daemon", module: str = "router.cli", base_env: Mapping[str, str] | None = None) -> None:
        """`env` is added to `base_env` (default: this process's environment); `module` is run as
        `python -m <module> serve` (a probe daemon: tests.support.daemon_probe)."""
        self.workdir = workdir
        self.policy_path = workdir / f"{name}.policy.yaml"
        self.policy_path.write_text(policy_text, encoding="utf-8")
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self.tasks_path = workdir / f"{name}.tasks"
        self.probe = probe
        self.port = port or free_port()
        self._env = {**(os.environ if base_env is None else base_env), **(env or {})}
        self._module = module
        self._args = tuple(args)
        self.proc: asyncio.subprocess.Process | None = None
        self._files: list[Any] = []

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.kill()

    async def spawn(self) -> None:
        """Start the process without waiting for it to be ready (see `wait_ready`)."""
        module = ["-m", "tests.support.daemon_probe", "--tasks-file", str(self.tasks_path)] if self.probe \
            else ["-m", self._module, "serve"]
        out, err = self.stdout_path.open("wb"), self.stderr_path.open("wb")
        self._files = [out, err]
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, *module, "-c", str(self.policy_path), "--port", str(self.port), *self._args,
            stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err, cwd=REPO_ROOT,
            env=self._env)

    async def wait_ready(self, within_s: float = 20.0) -> None:
        assert self.proc is not None
        await wait_until_ready(self.url("/readyz"), self.proc, self.stderr_path, within_s)

    async def start(self, within_s: float = 20.0) -> None:
        await self.spawn()
        await self.wait_ready(within_s)

    def stderr(self) -> str:
        return _text(self.stderr_path)

    def stdout(self) -> str:
        return _text(self.stdout_path)

    def access_log(self) -> list[dict[str, Any]]:
        return read_access_log(self.stdout_path)

    def write_policy(self, text: str) -> None:
        """Replace the policy file atomically (a rename), as a config management tool would."""
        staging = self.policy_path.with_suffix(".new")
        staging.write_text(text, encoding="utf-8")
        staging.replace(self.policy_path)

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def metrics(self, session: aiohttp.ClientSession) -> Metrics:
        return await scrape(session, f"{self.base_url}/metrics")

    async def task_count(self, within_s: float = 2.0) -> int:
        """The daemon's asyncio task count (probe daemons only): ask with SIGUSR2, read the answer."""
        if not self.probe:
            raise RuntimeError("task_count needs DaemonProcess(probe=True)")
        self.tasks_path.unlink(missing_ok=True)
        self.send(signal.SIGUSR2)
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError):
                return int(json.loads(self.tasks_path.read_text())["tasks"])
            await asyncio.sleep(0.01)
        raise RuntimeError("the probe daemon did not report its task count")

    async def wait_access_lines(self, count: int, within_s: float = 3.0) -> list[dict[str, Any]]:
        """The access log once it has `count` lines (it is flushed every 100 ms), or as it is after `within_s`."""
        deadline = time.monotonic() + within_s
        lines = self.access_log()
        while len(lines) < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            lines = self.access_log()
        return lines

    async def wait_exit(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after `timeout_s`."""
        assert self.proc is not None
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.proc.wait(), timeout_s)
        return None

    async def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after `grace_s`; the children it leaves behind (workers) are killed too."""
        proc = self.proc
        if proc is not None and proc.returncode is None:
            children = child_pids(proc.pid)
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            if await self.wait_exit(grace_s) is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
            for pid in children:  # only children of a process this test started
                if alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        await self.kill()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()
        for file in self._files:
            file.close()
        self._files = []


async def wait_until_ready(url: str, proc: asyncio.subprocess.Process, stderr_path: Path,
                           within_s: float = 20.0) -> None:
    """Poll `url` (a /readyz) until it answers 200; AssertionError with the daemon's stderr otherwise."""
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
        while time.monotonic() < deadline and proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.05)
    raise AssertionError(f"daemon not ready at {url} (exit code {proc.returncode}); stderr:\n{_text(stderr_path)}")


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def child_pids(pid: int) -> list[int]:
    """Live (non-zombie) processes whose parent is `pid`, from /proc."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not running)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
