"""`router serve --workers N`: N daemon processes on one port, kept running by this parent.

Python serves from one core per process; N workers use N cores. Each worker is a
full daemon (`python -m router serve --worker i/N`) listening with SO_REUSEPORT,
so the kernel spreads connections over them. The supervisor runs the demo
providers (once, not per worker), forwards SIGTERM/SIGINT (drain and stop) and
SIGHUP (reload) to every worker, and restarts a worker that dies on its own.

Limits: with `state.backend: redis` every worker shares the fleet's buckets. With
`memory` each worker enforces 1/N of every limit (logged as a warning): exact only
when the kernel spreads a client's requests evenly, which it roughly does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable

from router.policy.model import Policy
from router.server.demo import start_demo_providers, stop_demo_providers

log = logging.getLogger("router.server")
RESTART_DELAY_S = 1.0
MIN_UPTIME_S = 3.0  # a worker that dies sooner is not restarted


async def supervise(policy: Policy, path: str, host: str, port: int, workers: int, *, watch: bool,
                    log_level: str) -> int:
    if policy.state.backend == "memory" and (policy.clients or _has_provider_limits(policy)):
        log.warning("state.backend is memory with %d workers: each worker enforces 1/%d of every limit; "
                    "use state.backend: redis for exact shared limits and shared breakers", workers, workers)
    demo = await start_demo_providers(policy)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory(prefix="llm-router-") as directory:
        procs: dict[int, asyncio.subprocess.Process] = {}

        async def spawn(index: int) -> None:
            argv = [sys.executable, "-m", "router", "serve", "-c", path, "--host", host, "--port", str(port),
                    "--log-level", log_level, "--worker", f"{index}/{workers}", "--worker-dir", directory]
            if watch:
                argv.append("--watch")
            procs[index] = await asyncio.create_subprocess_exec(*argv)

        def forward(sig: signal.Signals) -> None:
            if sig in (signal.SIGTERM, signal.SIGINT):
                stopping.set()
            for proc in procs.values():
                if proc.returncode is None:
                    proc.send_signal(sig)

        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, forward, sig)
        try:
            for index in range(workers):
                await spawn(index)
            log.info("supervisor: %d workers on http://%s:%d/v1", workers, host, port)
            codes = await asyncio.gather(*(_keep_running(i, procs, spawn, stopping) for i in range(workers)))
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for proc in procs.values():
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            await stop_demo_providers(demo)
    return max(codes, default=0)


async def _keep_running(index: int, procs: dict[int, asyncio.subprocess.Process],
                        spawn: Callable[[int], Awaitable[None]], stopping: asyncio.Event) -> int:
    loop = asyncio.get_running_loop()
    while True:
        started = loop.time()
        code = await procs[index].wait()
        if stopping.is_set():
            return code
        if loop.time() - started < MIN_UPTIME_S:
            # It cannot start (port taken, policy invalid): restarting would only loop. Stop all.
            log.error("supervisor: worker %d exited with %d right after start; stopping", index, code)
            stopping.set()
            for proc in procs.values():
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
            return code or 1
        log.error("supervisor: worker %d exited with %d; restarting in %gs", index, code, RESTART_DELAY_S)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(RESTART_DELAY_S):
                await stopping.wait()
        if stopping.is_set():
            return code
        await spawn(index)


def _has_provider_limits(policy: Policy) -> bool:
    return any(p.limits.requests_per_minute or p.limits.tokens_per_minute for p in policy.providers.values())
