"""Open-loop load through the real `Router` on virtual time, and what each request saw.

Requests are offered on a fixed schedule whatever the answers (as real clients do), so a slow
provider builds up requests in flight, as it would in production.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from router import Router, RouterError
from router.observe.observer import NullObserver
from router.policy.loader import parse_policy
from tests.support.virtual_time import LoopClock, SimTransport

MESSAGES = [{"role": "user", "content": "hi"}]


@dataclass(frozen=True)
class Served:
    start: float  # seconds after the scenario began
    provider: str | None  # None: the request failed
    latency: float  # JSON: the whole answer; streams: to the first event
    error: str | None = None


class Counting(NullObserver):
    """Counts the events the learning features report."""

    def __init__(self) -> None:
        self.hedges: dict[str, int] = {}
        self.probes: list[tuple[str, bool]] = []
        self.limit_throttles = 0

    def hedged(self, route: str, outcome: str) -> None:
        self.hedges[outcome] = self.hedges.get(outcome, 0) + 1

    def health_probed(self, provider: str, ok: bool) -> None:
        self.probes.append((provider, ok))

    def limit_header_throttled(self, provider: str) -> None:
        self.limit_throttles += 1


def router_for(policy_yaml: str, transport: SimTransport, *, seed: int = 7, observer: NullObserver | None = None,
               health_check: Callable[..., object] | None = None) -> Router:
    return Router(parse_policy(policy_yaml), transport=transport, clock=LoopClock(), rng=random.Random(seed),
                  observer=observer, health_check=health_check)  # type: ignore[arg-type]


async def offer(router: Router, *, rate: float, duration: float, stream: bool = False) -> list[Served]:
    """`rate` requests a second for `duration` seconds, each on its own task; waits for all of them."""
    loop = asyncio.get_running_loop()
    begin = loop.time()

    async def one(at: float) -> Served:
        started = loop.time()
        try:
            if stream:
                async with router.stream({"model": "chat", "messages": MESSAGES, "stream": True}) as answer:
                    first: float | None = None
                    async for _ in answer:
                        if first is None:
                            first = loop.time() - started
                    return Served(at, answer.provider, first or 0.0)
            result = await router.chat({"model": "chat", "messages": MESSAGES})
            return Served(at, result.provider, loop.time() - started)
        except RouterError as exc:
            return Served(at, None, loop.time() - started, error=type(exc).__name__)

    tasks = []
    for index in range(round(rate * duration)):
        at = index / rate
        delay = begin + at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(at)))
    return list(await asyncio.gather(*tasks))


def share(served: Sequence[Served], provider: str, start: float, end: float) -> float:
    window = [s for s in served if start <= s.start < end]
    return sum(1 for s in window if s.provider == provider) / len(window) if window else 0.0


def first_majority(served: Sequence[Served], provider: str, after: float, *, window: float = 1.0) -> float | None:
    """Seconds after `after` until the first `window`-long stretch of requests mostly served by `provider`."""
    step = 0.1
    t = after
    end = max(s.start for s in served)
    while t + window <= end:
        if share(served, provider, t, t + window) > 0.5:
            return t - after
        t += step
    return None


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]
