"""Virtual time for scenario tests: an event loop whose clock jumps to the next timer when nothing is
ready, and simulated providers that answer after virtual delays.

A scenario of minutes (hundreds of concurrent requests, providers that slow down, recover, rate
limit) runs through the real `Router` — planner, breakers, limits, budgets, hedges, the prober —
in well under a second of real time, and gives the same result on a loaded machine as on a quiet
one: nothing depends on how fast the machine is. Only code that does no real I/O may run on it.
The loop itself is `router simulate`'s (router/sim/loop.py).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field

from router.sim.loop import LoopClock, VirtualTimeLoop, run_virtual
from router.upstream.errors import ConnectFailed
from router.upstream.sse import SseEvent, SseParser
from router.upstream.transport import Outgoing
from tests.support.memory import COMPLETION, sse_body

__all__ = ["Answer", "LoopClock", "SimReply", "SimTransport", "VirtualTimeLoop", "run_virtual"]


@dataclass
class Answer:
    """What a simulated provider does with one attempt."""

    status: int = 200
    head_s: float = 0.0  # until the response head
    first_event_s: float = 0.0  # streams: from the head to the first event
    headers: Mapping[str, str] = field(default_factory=dict)
    refused: bool = False  # connection refused (after head_s)
    retry_after: str | None = None  # with a 429


@dataclass
class SimReply:
    status: int
    body: bytes
    headers: Mapping[str, str]
    first_event_s: float
    sent_at: float
    closed_at: float | None = None
    resent: bool = False

    async def read(self) -> bytes:
        return self.body

    async def batches(self) -> AsyncIterator[list[SseEvent]]:
        if self.first_event_s > 0:
            await asyncio.sleep(self.first_event_s)
        yield SseParser().feed(self.body)

    def close(self) -> None:
        if self.closed_at is None:
            self.closed_at = asyncio.get_running_loop().time()


Behaviour = Callable[[Outgoing, float], Answer]  # (attempt, virtual now) -> what the provider does


class SimTransport:
    """Each provider answers per its behaviour; every attempt and reply is kept for the assertions."""

    def __init__(self, **behaviours: Behaviour) -> None:
        self.behaviours = behaviours
        self.sent: list[tuple[float, str]] = []  # (virtual time, provider)
        self.replies: list[tuple[str, SimReply]] = []

    async def send(self, outgoing: Outgoing) -> SimReply:
        now = asyncio.get_running_loop().time()
        name = outgoing.provider.name
        self.sent.append((now, name))
        answer = self.behaviours[name](outgoing, now)
        if answer.head_s > 0:
            await asyncio.sleep(answer.head_s)
        if answer.refused:
            raise ConnectFailed("connection refused (simulated)")
        headers = {"content-type": "text/event-stream" if outgoing.stream else "application/json",
                   **{k.lower(): v for k, v in answer.headers.items()}}
        if answer.status == 429 and answer.retry_after is not None:
            headers["retry-after"] = answer.retry_after
        if answer.status >= 400:
            body = json.dumps({"error": {"message": "simulated", "type": "error", "code": None}}).encode()
            headers["content-type"] = "application/json"
        elif outgoing.stream:
            body = sse_body(["hel", "lo"], usage={"prompt_tokens": 3, "completion_tokens": 2})
        else:
            body = json.dumps({**COMPLETION, "model": name}).encode()
        reply = SimReply(answer.status, body, headers, answer.first_event_s, now)
        self.replies.append((name, reply))
        return reply

    async def aclose(self) -> None:
        pass

    def count(self, provider: str) -> int:
        return sum(1 for _, name in self.sent if name == provider)
