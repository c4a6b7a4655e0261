"""Virtual time for scenario tests: an event loop whose clock jumps to the next timer when nothing is
ready, and simulated providers that answer after virtual delays.

A scenario of minutes (hundreds of concurrent requests, providers that slow down, recover, rate
limit) runs through the real `Router` — planner, breakers, limits, budgets, hedges, the prober —
in well under a second of real time, and gives the same result on a loaded machine as on a quiet
one: nothing depends on how fast the machine is. Only code that does no real I/O may run on it.
"""

from __future__ import annotations

import asyncio
import json
import selectors
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from router.upstream.errors import ConnectFailed
from router.upstream.sse import SseEvent, SseParser
from router.upstream.transport import Outgoing
from tests.support.memory import COMPLETION, sse_body

T = TypeVar("T")


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`time()` is virtual: when every task waits for a timer, the clock jumps to that timer."""

    def __init__(self) -> None:
        super().__init__(selectors.SelectSelector())
        self._virtual_now = 0.0
        real_select = self._selector.select  # type: ignore[attr-defined]

        def select(timeout: float | None = None) -> list[Any]:
            if timeout is None:  # no timer at all: only real I/O could wake us
                return real_select(timeout)
            events = real_select(0)
            if not events and timeout > 0:
                self._virtual_now += timeout
            return events

        self._selector.select = select  # type: ignore[attr-defined]

    def time(self) -> float:
        return self._virtual_now


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class LoopClock:
    """The router's clock, read from the running loop (virtual here)."""

    __slots__ = ()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return 1_700_000_000.0 + asyncio.get_running_loop().time()


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
