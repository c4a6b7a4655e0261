"""An in-memory transport: scripted provider answers without sockets, for engine and metrics tests.

Answers come in microseconds, so thousands of requests go through `Router.chat` in well
under a second, and with a `FakeClock` and `RecordingSleep` nothing sleeps for real.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from router import Router
from router.clock import FakeClock
from router.observe.observer import Observer
from router.policy.model import BreakerPolicy, Policy, Provider, RetryBudget, RetryPolicy, Route, Target
from router.upstream.errors import TransportError
from router.upstream.sse import SseEvent, SseParser, SseRun
from router.upstream.transport import Outgoing

SEED = 1
REQUEST = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
COMPLETION = {"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 1}}
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream"}


@dataclass
class MemoryReply:
    """A provider's answer. As a stream, its body's events come out one by one; `hang_after` events in
    it waits forever, `fail_after` events in it raises `failure` (a cut, a stall)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: dict(JSON_HEADERS))
    hang_after: int | None = None
    fail_after: int | None = None
    failure: TransportError | None = None
    closed: bool = False
    resent: bool = False
    per_read: int = 1

    async def read(self) -> bytes:
        return self.body

    async def batches(self) -> AsyncIterator[list[SseEvent | SseRun]]:
        """`per_read` events a batch, as if each upstream read had brought that many: grouped as the
        transport groups a read (a burst of one-line events is one `SseRun`)."""
        reads = SseParser(runs=True)
        batch: list[SseEvent] = []
        for index, event in enumerate(SseParser().feed(self.body)):
            stop = (self.hang_after is not None and index >= self.hang_after) or \
                (self.fail_after is not None and index >= self.fail_after)
            if stop:
                if batch:
                    yield reads.feed(b"".join(event.raw for event in batch))
                    batch = []
                if self.hang_after is not None and index >= self.hang_after:
                    await asyncio.get_running_loop().create_future()
                assert self.failure is not None
                raise self.failure
            batch.append(event)  # type: ignore[arg-type]
            if len(batch) >= self.per_read:
                yield reads.feed(b"".join(event.raw for event in batch))
                batch = []
        if batch:
            yield reads.feed(b"".join(event.raw for event in batch))
        if self.fail_after is not None and self.failure is not None:
            raise self.failure

    def close(self) -> None:
        self.closed = True


def completion_reply(model: str = "upstream", **fields: Any) -> MemoryReply:
    return MemoryReply(200, json.dumps({**COMPLETION, "model": model, **fields}).encode())


def error_reply(status: int, message: str = "boom", *, code: str | None = None,
                headers: Mapping[str, str] | None = None) -> MemoryReply:
    body = json.dumps({"error": {"message": message, "type": "error", "code": code}}).encode()
    return MemoryReply(status, body, {**JSON_HEADERS, **(headers or {})})


def sse_body(pieces: Iterable[str], *, usage: Mapping[str, int] | None = None, malformed_first: bool = False,
             done: bool = True, finish: bool = True, model: str | None = None) -> bytes:
    """A chat-completion stream: role chunk, one chunk per piece, finish chunk, [usage], [DONE]."""
    def chunk(delta: dict[str, Any] | None, finish_reason: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        head = {"id": "s1", "object": "chat.completion.chunk", **({"model": model} if model else {})}
        return b"data: " + json.dumps({**head, "choices": choices, **extra}).encode() + b"\n\n"
    out = [b"data: {not json\n\n"] if malformed_first else []
    out.append(chunk({"role": "assistant", "content": ""}))
    out.extend(chunk({"content": piece}) for piece in pieces)
    if finish:
        out.append(chunk({}, "stop"))
    if usage is not None:
        out.append(chunk(None, usage=dict(usage)))
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def stream_reply(body: bytes, *, hang_after: int | None = None, fail_after: int | None = None,
                 failure: TransportError | None = None, per_read: int = 1) -> MemoryReply:
    return MemoryReply(200, body, dict(SSE_HEADERS), hang_after=hang_after, fail_after=fail_after, failure=failure,
                       per_read=per_read)


Step = MemoryReply | TransportError | Callable[[], MemoryReply]


class ScriptedTransport:
    """Answers each provider's attempts from its script, in order; an unscripted attempt fails the test."""

    def __init__(self, **scripts: list[Step]) -> None:
        self.scripts = {name: list(steps) for name, steps in scripts.items()}
        self.sent: list[Outgoing] = []

    @property
    def providers(self) -> list[str]:
        return [o.provider.name for o in self.sent]

    async def send(self, outgoing: Outgoing) -> MemoryReply:
        self.sent.append(outgoing)
        script = self.scripts.get(outgoing.provider.name)
        assert script, f"unexpected attempt on {outgoing.provider.name}"
        step = script.pop(0)
        if isinstance(step, TransportError):
            raise step
        return step() if callable(step) else step

    async def aclose(self) -> None:
        pass

    def unused(self) -> dict[str, int]:
        return {name: len(steps) for name, steps in self.scripts.items() if steps}


Answer = Callable[[Outgoing], MemoryReply]


class MemoryTransport:
    """Answers every attempt with `answers[provider](outgoing)` (default: a completion); records providers."""

    def __init__(self, **answers: Answer) -> None:
        self.answers = answers
        self.sent: list[str] = []

    async def send(self, outgoing: Outgoing) -> MemoryReply:
        self.sent.append(outgoing.provider.name)
        answer = self.answers.get(outgoing.provider.name)
        return answer(outgoing) if answer is not None else completion_reply()

    async def aclose(self) -> None:
        pass


class HangingTransport(MemoryTransport):
    """Never answers: the attempt waits until it is cancelled."""

    async def send(self, outgoing: Outgoing) -> MemoryReply:
        self.sent.append(outgoing.provider.name)
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


class RecordingSleep:
    """The engine's sleep: records each delay and moves the fake clock instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(float(delay))
        self.clock.advance(float(delay))


# -- a router over the scripted transport, on a fake clock ------------------------------------------

@dataclass
class Harness:
    router: Router
    transport: ScriptedTransport
    clock: FakeClock
    sleep: RecordingSleep

    async def chat(self, body: dict[str, Any] | None = None) -> Any:
        return await self.router.chat(body or REQUEST)


def direct_policy(targets: list[Target], *, retry: RetryPolicy | None = None,
                  breaker: BreakerPolicy | None = None, budget: RetryBudget | None = None,
                  deadline_s: float = 60.0, prefill: Iterable[str] = ()) -> Policy:
    """Route `chat` over `targets` (providers at http://<name>.test/v1), built without YAML."""
    names = sorted({t.provider for t in targets})
    providers = {n: Provider(n, f"http://{n}.test/v1", breaker=breaker or BreakerPolicy(),
                             supports_prefill=n in set(prefill)) for n in names}
    route = Route("chat", tuple(targets), retry=retry or RetryPolicy(), deadline_s=deadline_s)
    return Policy(providers=providers, routes={"chat": route}, retry_budget=budget or RetryBudget())


def harness(targets: list[Target], transport: ScriptedTransport, *, observer: Observer | None = None,
            **policy: Any) -> Harness:
    """A router on a fake clock whose sleeps are recorded, with a seeded random source (see `backoffs`)."""
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    router = Router(direct_policy(targets, **policy), transport=transport, clock=clock,
                    rng=random.Random(SEED), sleep=sleep, observer=observer)
    return Harness(router, transport, clock, sleep)


def backoffs(*ceilings: float) -> list[float]:
    """The delays full jitter draws from the engine's seeded random source, in order."""
    rng = random.Random(SEED)
    return [rng.uniform(0.0, c) for c in ceilings]
