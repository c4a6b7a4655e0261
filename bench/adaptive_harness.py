"""The harness of bench/adaptive.py: an open-loop client, router daemons, and variants run side by side.

`open_loop` is the client: requests fired on a fixed schedule whatever the answers (an open loop, with a
cap on requests in flight), each timed from send to the end of the answer and, for streams, to the first
event; the router's `x-router-provider` and `x-router-attempts` headers are kept.

A `Variant` is one side of a comparison: its fakes (bench/adaptive_fakes.py), its route and provider
settings; `run_variants` starts the fakes and a `router serve` daemon (`Daemon`: a generated policy, a
free port, /readyz) per variant, runs a drive against each (side by side, or one after the other), and
stops everything whatever happens. A daemon that exits before it is ready refused its policy: that
variant is reported as rejected.
"""


from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from prometheus_client.parser import text_string_to_metric_families

from bench.adaptive_fakes import FakeProvider, free_port  # bench/adaptive.py puts the repository root on the path


# -- the client ----------------------------------------------------------------------------------------
@dataclass
class Sample:
    """One client request, times in seconds since the scenario's start."""

    sent: float
    done: float | None = None
    status: int = 0  # 0: no HTTP answer (see error)
    provider: str | None = None  # x-router-provider
    attempts: int | None = None  # x-router-attempts
    first_event: float | None = None  # streams: the first `data:` line
    complete: bool = False  # a JSON 200 read whole, or a stream that ended with [DONE]
    error: str | None = None

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.sent

    @property
    def ttfe(self) -> float | None:
        return None if self.first_event is None else self.first_event - self.sent


async def _request(session: aiohttp.ClientSession, url: str, body: bytes, stream: bool, sample: Sample,
                   origin: float) -> None:
    try:
        async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
            sample.status = resp.status
            sample.provider = resp.headers.get("x-router-provider")
            attempts = resp.headers.get("x-router-attempts", "")
            sample.attempts = int(attempts) if attempts.isdigit() else None
            if stream and resp.status == 200:
                async for line in resp.content:
                    if line.startswith(b"data:"):
                        if sample.first_event is None:
                            sample.first_event = time.monotonic() - origin
                        if line.strip() == b"data: [DONE]":
                            sample.complete = True
            else:
                await resp.read()
                sample.complete = resp.status == 200
    except asyncio.CancelledError:
        sample.error = "unfinished when the grace period ended"
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        sample.error = f"{type(exc).__name__}: {exc}"
    finally:
        sample.done = time.monotonic() - origin


async def open_loop(url: str, *, rate: float, duration_s: float, origin: float, stream: bool = False,
                    max_in_flight: int = 256, grace_s: float = 20.0) -> list[Sample]:
    """Send `rate` requests per second for `duration_s` from `origin` without waiting for answers (at most
    `max_in_flight` at once: beyond it a request is recorded as skipped), then wait at most `grace_s` for
    the last answers and cancel what is left. Bounded in count and time."""
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 16,
                       "stream": stream}).encode()
    samples: list[Sample] = []
    tasks: set[asyncio.Task[None]] = set()
    timeout = aiohttp.ClientTimeout(total=duration_s + grace_s + 5)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=max_in_flight), timeout=timeout) as session:
        for index in range(round(rate * duration_s)):
            delay = origin + index / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            sample = Sample(sent=time.monotonic() - origin)
            samples.append(sample)
            if len(tasks) >= max_in_flight:
                sample.error = "skipped: too many requests in flight"
                continue
            task = asyncio.create_task(_request(session, url, body, stream, sample, origin))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            _, pending = await asyncio.wait(set(tasks), timeout=grace_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return samples


# -- the harness: router daemons, and variants run side by side ----------------------------------------
MODEL = "fake-model"
_PROCESSES: list[subprocess.Popen[bytes]] = []  # every router started, killed at exit whatever happens
ROOT = Path(__file__).resolve().parent.parent


# -- the router daemon -----------------------------------------------------------------------------------
class PolicyRejected(RuntimeError):
    """The router exited before it was ready: it refused the policy (or could not start)."""


class Daemon:
    """One `router serve` process on a generated policy, its log in the run's temporary directory."""

    def __init__(self, label: str, policy: dict[str, Any], workdir: Path) -> None:
        self.port = free_port()
        policy["server"] = {"host": "127.0.0.1", "port": self.port, "drain_timeout_s": 1}
        self.policy_path = workdir / f"{label.replace('/', '-')}.yaml"
        self.log_path = self.policy_path.with_suffix(".log")
        self.policy_path.write_text(yaml.safe_dump(policy, sort_keys=False))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def spawn(self) -> None:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "router.cli", "serve", "-c", str(self.policy_path), "--log-level", "warning"],
                stdout=subprocess.DEVNULL, stderr=log, cwd=ROOT, start_new_session=True)
        _PROCESSES.append(self.proc)

    async def ready(self, timeout_s: float = 30.0) -> None:
        """Wait for GET /readyz to answer 200; PolicyRejected if the process ends first."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise PolicyRejected(self.log_tail())
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with session.get(self.url + "/readyz") as resp:
                        if resp.status == 200:
                            return
                await asyncio.sleep(0.05)
        raise RuntimeError(f"the router was not ready within {timeout_s} s: {self.log_tail()}")

    async def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The daemon's /metrics as (sample name, labels, value)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session, \
                session.get(self.url + "/metrics") as resp:
            text = await resp.text()
        return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]

    def log_tail(self, lines: int = 3) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])[-600:] or "(no output)"

    def stop(self) -> None:
        stop_process(self.proc)


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def metric_sum(samples: Sequence[tuple[str, dict[str, str], float]], name: str,
               keep: Callable[[dict[str, str]], bool]) -> float:
    return sum(value for sample, labels, value in samples if sample == name and keep(labels))


# -- variants: fakes + router + a drive, side by side -------------------------------------------------------
@dataclass
class Variant:
    name: str
    label: str  # the table's column header
    fakes: dict[str, FakeProvider]
    targets: list[dict[str, Any]]
    route: dict[str, Any]
    providers: dict[str, dict[str, Any]]
    daemon: Daemon | None = None
    rejected: str | None = None

    def policy(self) -> dict[str, Any]:
        return {"version": 1,
                "providers": {name: {"base_url": fake.base_url, **self.providers.get(name, {})}
                              for name, fake in self.fakes.items()},
                "routes": {"bench": {"targets": self.targets, **self.route}}}

    @property
    def chat_url(self) -> str:
        assert self.daemon is not None
        return self.daemon.url + "/v1/chat/completions"


def targets(*tiers: str) -> list[dict[str, Any]]:
    """`targets("A B")`: A and B in tier 0; `targets("P1", "P2")`: P1 in tier 0, P2 in tier 1."""
    return [{"provider": name, "model": MODEL, "priority": priority, "weight": 1}
            for priority, tier in enumerate(tiers) for name in tier.split()]


Drive = Callable[[Variant, float], Awaitable[dict[str, Any]]]


async def _setup(variant: Variant, workdir: Path) -> None:
    for fake in variant.fakes.values():
        await fake.start()
    variant.daemon = Daemon(variant.name, variant.policy(), workdir)
    variant.daemon.spawn()
    try:
        await variant.daemon.ready()
    except PolicyRejected as exc:
        variant.rejected = str(exc)
        print(f"  {variant.name}: the router refused the policy: {exc}", flush=True)


async def _drive(variant: Variant, drive: Drive) -> dict[str, Any]:
    if variant.rejected is not None:
        return {"rejected": variant.rejected}
    origin = time.monotonic() + 0.2
    for fake in variant.fakes.values():
        fake.begin(origin)
    return await drive(variant, origin)


async def _teardown(variant: Variant) -> None:
    if variant.daemon is not None:
        await asyncio.to_thread(variant.daemon.stop)
    for fake in variant.fakes.values():
        await fake.stop()


async def run_variants(variants: Sequence[Variant], drive: Drive, *, sequential: bool) -> dict[str, dict[str, Any]]:
    """Run each variant's drive (all at once, or one after the other); every process and fake is stopped after."""
    with tempfile.TemporaryDirectory(prefix="bench-adaptive-") as tmp:
        workdir = Path(tmp)
        if sequential:
            results = []
            for variant in variants:
                try:
                    await _setup(variant, workdir)
                    results.append(await _drive(variant, drive))
                finally:
                    await _teardown(variant)
        else:
            try:
                await asyncio.gather(*(_setup(variant, workdir) for variant in variants))
                results = list(await asyncio.gather(*(_drive(variant, drive) for variant in variants)))
            finally:
                await asyncio.gather(*(_teardown(variant) for variant in variants))
    return {variant.name: result for variant, result in zip(variants, results, strict=True)}


def stop_all() -> None:
    """Stop every router this run started (run at exit, whatever happened)."""
    for proc in _PROCESSES:
        stop_process(proc)
