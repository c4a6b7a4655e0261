"""Open-loop load through a real `Router`, and what each request got.

Requests arrive on a fixed schedule whatever the answers, as independent clients' requests do,
so a slow or silent provider builds up requests in flight as it would in production. Arrivals
are a Poisson process (exponential gaps, seeded): real traffic comes in bursts, and evenly spaced
arrivals would hide what a burst does to limits and connection slots.

`offer` runs on whatever loop is running: on virtual time for `router simulate`, on real time
for the agreement test. It costs little per request beyond the router's own work: arrivals are a
chain of timer callbacks (one heap entry at a time), each request is one task, and what it got
goes into flat arrays.
"""

from __future__ import annotations

import asyncio
import math
import random
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from router.engine.outcome import SUCCESS
from router.errors import NoTargetAvailable, RouterError
from router.request import ChatRequest, parse_chat_request
from router.router import Router
from router.sim.loop import call_at

MESSAGES = [{"role": "user", "content": "Say hello."}]
FAILED = -1  # `Outcomes.served` of a request that failed


@dataclass(frozen=True)
class Schedule:
    """When each request arrives (seconds after the start) and whether it is a stream."""

    arrivals: array[float]
    streams: bytearray  # 1: a stream

    @classmethod
    def poisson(cls, rate_per_s: float, *, stream_percent: float, seed: int, duration_s: float | None = None,
                count: int | None = None) -> Schedule:
        """Arrivals at `rate_per_s` on average: `count` of them, or as many as fall within `duration_s`."""
        if (duration_s is None) == (count is None):
            raise ValueError("give exactly one of duration_s and count")
        rng = random.Random(f"{seed}:arrivals")
        arrivals, streams = array("d"), bytearray()
        share = stream_percent / 100.0
        t = rng.expovariate(rate_per_s)
        while (count is None and t < duration_s) or (count is not None and len(arrivals) < count):  # type: ignore[operator]
            arrivals.append(t)
            streams.append(rng.random() < share)
            t += rng.expovariate(rate_per_s)
        return cls(arrivals, streams)

    def __len__(self) -> int:
        return len(self.arrivals)


@dataclass
class Outcomes:
    """What each request got (index = arrival order), and what each provider saw."""

    providers: tuple[str, ...]  # the policy's, in order; `served` holds an index into it
    schedule: Schedule
    latency: array[float] = field(default_factory=lambda: array("d"))  # to the answer (a stream: its first event)
    attempts: array[int] = field(default_factory=lambda: array("H"))  # upstream attempts the router made
    served: array[int] = field(default_factory=lambda: array("b"))  # provider index, or FAILED (then latency NaN)
    failures: Counter[str] = field(default_factory=Counter)  # outcome label (no_target: with why) -> requests
    provider_attempts: dict[str, int] = field(default_factory=dict)  # attempts that reached each provider
    decisions: dict[str, dict[str, int]] = field(default_factory=dict)  # provider -> what it did -> attempts
    end_s: float = 0.0  # when the last request ended, seconds after the start

    def __len__(self) -> int:
        return len(self.schedule)


def request_for(model: str, *, stream: bool) -> ChatRequest:
    """Parsed once and shared by every request: a ChatRequest is immutable, and the router only reads it."""
    body: dict[str, object] = {"model": model, "messages": MESSAGES}
    if stream:
        body["stream"] = True
    return parse_chat_request(body)


class _Offer:
    """The arrival chain and the per-request coroutine (see the module docstring)."""

    def __init__(self, router: Router, schedule: Schedule, providers: Sequence[str], model: str,
                 client: str | None, origin: float | None) -> None:
        self.router = router
        self.schedule = schedule
        self.client = client
        self.index_of: Mapping[str | None, int] = {name: i for i, name in enumerate(providers)}
        n = len(schedule)
        self.outcomes = Outcomes(tuple(providers), schedule, array("d", [math.nan]) * n, array("H", [0]) * n,
                                 array("b", [FAILED]) * n)
        self.json_request = request_for(model, stream=False)
        self.stream_request = request_for(model, stream=True)
        self.loop = asyncio.get_running_loop()
        self.origin = self.loop.time() if origin is None else origin
        self.issued = 0
        self.running: dict[int, asyncio.Task[None]] = {}
        self.done: asyncio.Future[None] = self.loop.create_future()

    def start(self) -> None:
        if len(self.schedule) == 0:
            self.done.set_result(None)
            return
        call_at(self.loop, self.origin + self.schedule.arrivals[0], self._arrive)

    def _arrive(self) -> None:
        index = self.issued
        self.issued = index + 1
        self.running[index] = self.loop.create_task(self._one(index, bool(self.schedule.streams[index])))
        if self.issued < len(self.schedule):
            call_at(self.loop, self.origin + self.schedule.arrivals[self.issued], self._arrive)

    async def _one(self, index: int, stream: bool) -> None:
        router, outcomes, time = self.router, self.outcomes, self.loop.time
        record = router.new_record(self.client)
        started = time()
        try:
            if stream:
                answer = router.stream(self.stream_request, client=self.client, record=record)
                await answer.start()
                latency = time() - started
                async for _ in answer.batches():
                    pass
            else:
                await router.chat(self.json_request, client=self.client, record=record)
                latency = time() - started
                record.finish(SUCCESS)  # with the caller's own record, as a server's, a success is the caller's to end
            outcomes.latency[index] = latency
            outcomes.served[index] = self.index_of[record.provider]
        except NoTargetAvailable as exc:  # why matters here: retry budget, every target ejected, none available
            outcomes.failures[f"{record.outcome} ({str(exc).partition(';')[0]})"] += 1
        except RouterError:
            outcomes.failures[record.outcome or "error"] += 1
        except Exception as exc:  # a bug, not an outcome: stop the whole run with it
            if not self.done.done():
                self.done.set_exception(exc)
        finally:
            outcomes.attempts[index] = min(record.attempts, 65535)
            del self.running[index]
            if not self.running and self.issued == len(self.schedule) and not self.done.done():
                outcomes.end_s = time() - self.origin
                self.done.set_result(None)


async def offer(router: Router, schedule: Schedule, *, providers: Sequence[str], model: str,
                client: str | None = None, origin: float | None = None) -> Outcomes:
    """Offer `schedule` to `router` (asking for `model`, as `client`), wait for every request to end.
    `origin`: the loop time the schedule's arrivals count from (default: now)."""
    run = _Offer(router, schedule, providers, model, client, origin)
    run.start()
    try:
        await run.done
    finally:
        for task in list(run.running.values()):
            task.cancel()
    return run.outcomes
