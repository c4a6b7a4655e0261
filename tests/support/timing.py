"""Timeouts and cancellation under load, through the daemon: three scenarios, sized by their arguments.

tests/resilience/test_deadlines_and_disconnects.py runs them and asserts what must hold on a
loaded 2-core machine (another test run beside it); `python -m bench.soak --timing` runs them
on a quiet machine and holds them to the tight figures (the SLOs). Every figure is read per
request from the access log and at the fake providers.

- `run_deadline`: provider timeouts far beyond the deadline, so the deadline ends requests.
- `run_silent_provider`: the preferred provider never answers; each request pays one first-byte
  timeout, then fails over.
- `run_abandoned`: every client walks away within 0.5 s; its upstream attempt must close, and no
  retry or failover may follow.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.daemon import DaemonProcess
from tests.support.load import LoadConfig, LoadRun, run_load
from tests.support.scenarios import DisconnectEffects, disconnect_effects, logged_ends, settled_access_log
from tests.support.soak_env import SoakProviders, soak_policy

DEADLINE_S = 1.0
FIRST_BYTE_S = 0.3


@dataclass
class DeadlineReport:
    run: LoadRun
    access_lines: int
    outcomes: Counter[str]
    overshoot_ms: list[float]  # per request, measured in the daemon: latency beyond the deadline
    client_overshoot_ms: list[float]  # the same at the client

    def summary(self) -> str:
        return (f"deadline {DEADLINE_S} s: {self.access_lines} requests, outcomes {dict(self.outcomes)}; overshoot "
                f"max {max(self.overshoot_ms):.1f} ms in the daemon, {max(self.client_overshoot_ms):.1f} ms at "
                f"the client; this process's loop lag max {self.run.max_loop_lag * 1000:.1f} ms")


async def run_deadline(workdir: Path, *, requests: int = 400, concurrency: int = 100) -> DeadlineReport:
    _make_dir(workdir)
    # alpha hangs or drips its streams for 1.8 s, beta fails with 503s and backs off up to 0.8 s,
    # gamma stalls mid-stream or answers its first token late.
    async with SoakProviders(mix={}) as providers:
        providers.set_faults("alpha", {"hang": 0.5}, interval_s=0.3)
        providers.set_faults("beta", {"503": 0.7})
        providers.set_faults("gamma", {"stall": 0.4, "slow_first_token": 0.3}, interval_s=0.05)
        policy = soak_policy(providers.base_urls(), deadline_s=DEADLINE_S, ttft_s=None,
                             timeouts={"first_byte_s": 5, "idle_s": 5},
                             retry={"base_interval_s": 0.4, "max_interval_s": 0.8},
                             breaker={"consecutive_failures": 1000})
        async with DaemonProcess(policy, workdir) as daemon:
            run = await run_load(LoadConfig(url=daemon.chat_url, requests=requests, duration_s=30,
                                            concurrency=concurrency, seed=7, id_prefix="deadline"))
            lines = await settled_access_log(daemon, len(run.results))
    return DeadlineReport(run=run, access_lines=len(lines), outcomes=Counter(line["outcome"] for line in lines),
                          overshoot_ms=[line["latency_ms"] - DEADLINE_S * 1000 for line in lines],
                          client_overshoot_ms=[(r.latency - DEADLINE_S) * 1000 for r in run.results])


@dataclass
class SilentReport:
    run: LoadRun
    latencies: list[float]  # seconds, per request, from the access log
    at_silent: Counter[str]  # request id -> attempts at the silent provider
    elsewhere: Counter[str]  # request id -> attempts at the others

    def summary(self) -> str:
        return (f"silent provider, first_byte_s {FIRST_BYTE_S}: {len(self.latencies)} requests, latency min "
                f"{min(self.latencies):.3f} s max {max(self.latencies):.3f} s")


async def run_silent_provider(workdir: Path, *, requests: int = 200, concurrency: int = 50) -> SilentReport:
    _make_dir(workdir)
    # alpha is preferred and never answers. Its breaker never opens here and the retry budget allows every
    # request its failover, so every request pays for the silent provider, and once only.
    async with SoakProviders(mix={}) as providers:
        providers.set_faults("alpha", {"hang": 1.0})
        policy = soak_policy(providers.base_urls(), priorities={"alpha": 0, "beta": 1, "gamma": 1}, ttft_s=None,
                             timeouts={"first_byte_s": FIRST_BYTE_S}, breaker={"consecutive_failures": 1000},
                             budget={"percent": 100, "min_per_second": 5, "window_s": 10})
        async with DaemonProcess(policy, workdir) as daemon:
            config = LoadConfig(url=daemon.chat_url, requests=requests, duration_s=30, concurrency=concurrency,
                                seed=8, id_prefix="silent")
            providers.watch(f"silent-{i}" for i in range(config.requests))
            run = await run_load(config)
            lines = await settled_access_log(daemon, len(run.results))
            providers.scan()
    at_silent: Counter[str] = Counter()
    elsewhere: Counter[str] = Counter()
    for request_id, hits in providers.watched.items():
        for hit in hits:
            (at_silent if providers.provider_of(hit) == "alpha" else elsewhere)[request_id] += 1
    return SilentReport(run=run, latencies=[line["latency_ms"] / 1000 for line in lines], at_silent=at_silent,
                        elsewhere=elsewhere)


@dataclass
class AbandonedReport:
    run: LoadRun
    effects: DisconnectEffects
    delays: list[float] = field(default_factory=list)  # seconds from a client's close to its attempt's close

    def summary(self) -> str:
        delays, effects = self.delays, self.effects
        return (f"{effects.disconnects} disconnects, {len(delays)} upstream attempts open: closed after max "
                f"{delays[-1] * 1000:.1f} ms, p50 {delays[len(delays) // 2] * 1000:.1f} ms; first attempts read "
                f"after the client left {len(effects.first_after)}, retries or failovers after it "
                f"{len(effects.late_attempts)} (latest {max(effects.late_attempts, default=0) * 1000:.1f} ms after), "
                f"{len(effects.unexplained)} unexplained; loop lag max {self.run.max_loop_lag * 1000:.1f} ms")


async def run_abandoned(workdir: Path, *, requests: int = 300, concurrency: int = 100) -> AbandonedReport:
    _make_dir(workdir)
    # Every client walks away within 0.5 s of sending, while its request hangs, backs off after a 503,
    # waits 0.2 s for its answer or receives a stream paced at 0.1 s per event.
    async with SoakProviders(mix={}) as providers:
        for name in providers.names:
            providers.set_faults(name, {"hang": 0.3, "503": 0.3}, interval_s=0.1, delay_s=0.2)
        policy = soak_policy(providers.base_urls(), ttft_s=None, timeouts={"first_byte_s": 2, "idle_s": 2},
                             retry={"base_interval_s": 0.2, "max_interval_s": 0.4},
                             breaker={"consecutive_failures": 1000})
        async with DaemonProcess(policy, workdir) as daemon:
            config = LoadConfig(url=daemon.chat_url, requests=requests, duration_s=30, concurrency=concurrency,
                                seed=9, disconnect_ratio=1.0, disconnect_window_s=0.5, mid_stream_share=0.0,
                                id_prefix="gone")
            providers.watch(f"gone-{i}" for i in range(config.requests))
            run = await run_load(config)
            await asyncio.sleep(1.1)  # the longest an attempt may stay open after its client left
            providers.scan()
            lines = await settled_access_log(daemon, len(run.results))
    effects = disconnect_effects(run.results, providers.watched, logged_ends(lines), run.max_loop_lag)
    return AbandonedReport(run=run, effects=effects, delays=sorted(effects.close_delays))


def _make_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
