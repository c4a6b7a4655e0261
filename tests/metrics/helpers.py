"""Helpers for the metrics tests: a parsed scrape, an in-memory transport, policies as YAML.

The in-memory transport answers in microseconds without sockets, so thousands of
requests go through `Router.chat` in well under a second.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from router.observe.observer import NullObserver
from router.policy import parse_policy
from router.policy.model import Policy
from router.upstream.sse import SseEvent, SseParser
from router.upstream.transport import Outgoing

OK_BODY = {"id": "c1", "object": "chat.completion", "choices": [
    {"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


# -- a parsed /metrics page ----------------------------------------------------------------------

@dataclass(frozen=True)
class Scrape:
    """Every sample of a Prometheus text page: {(sample name, sorted label items): value}."""

    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    types: dict[str, str]  # family name -> type

    @classmethod
    def parse(cls, text: str) -> Scrape:
        samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        types: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            types[family.name] = family.type
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return cls(samples, types)

    @classmethod
    def of(cls, registry: CollectorRegistry) -> Scrape:
        return cls.parse(generate_latest(registry).decode())

    def get(self, name: str, **labels: str) -> float:
        """The sum of `name` over every series whose labels include `labels` (0 if none)."""
        wanted = set(labels.items())
        return sum(value for (sample, items), value in self.samples.items()
                   if sample == name and wanted <= set(items))

    def series(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        return {items: value for (sample, items), value in self.samples.items() if sample == name}

    def label_values(self, name: str, label: str) -> set[str]:
        return {dict(items)[label] for items in self.series(name) if label in dict(items)}


# -- an in-memory transport ----------------------------------------------------------------------

@dataclass
class MemoryReply:
    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})
    hang_after: int | None = None  # a stream: after this many events, wait forever
    closed: bool = False

    async def read(self) -> bytes:
        return self.body

    async def events(self) -> AsyncIterator[SseEvent]:
        for index, event in enumerate(SseParser().feed(self.body)):
            if self.hang_after is not None and index >= self.hang_after:
                await asyncio.get_running_loop().create_future()
            yield event

    def close(self) -> None:
        self.closed = True


Answer = Callable[[Outgoing], MemoryReply]


def ok(outgoing: Outgoing) -> MemoryReply:
    return MemoryReply(200, json.dumps(OK_BODY).encode())


def error(status: int, headers: Mapping[str, str] | None = None) -> MemoryReply:
    body = json.dumps({"error": {"message": "boom", "type": "error", "code": None}}).encode()
    return MemoryReply(status, body, {"Content-Type": "application/json", **(headers or {})})


def sse_body(pieces: Iterable[str], *, usage: Mapping[str, int] | None = None, malformed_first: bool = False,
             done: bool = True) -> bytes:
    """A chat-completion stream: role chunk, one chunk per piece, finish chunk, [usage], [DONE]."""
    def chunk(delta: dict[str, Any] | None, finish: str | None = None, **extra: Any) -> bytes:
        choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
        return b"data: " + json.dumps({"id": "s1", "object": "chat.completion.chunk", "choices": choices,
                                       **extra}).encode() + b"\n\n"
    out = [b"data: {not json\n\n"] if malformed_first else []
    out.append(chunk({"role": "assistant", "content": ""}))
    out.extend(chunk({"content": piece}) for piece in pieces)
    out.append(chunk({}, "stop"))
    if usage is not None:
        out.append(chunk(None, usage=dict(usage)))
    if done:
        out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def stream_reply(body: bytes, hang_after: int | None = None) -> MemoryReply:
    return MemoryReply(200, body, {"Content-Type": "text/event-stream"}, hang_after=hang_after)


class MemoryTransport:
    """Answers every attempt with `answers[provider](outgoing)` (default: `ok`); records the providers."""

    def __init__(self, **answers: Answer) -> None:
        self.answers = answers
        self.sent: list[str] = []

    async def send(self, outgoing: Outgoing) -> MemoryReply:
        self.sent.append(outgoing.provider.name)
        return self.answers.get(outgoing.provider.name, ok)(outgoing)

    async def aclose(self) -> None:
        pass


class HangingTransport(MemoryTransport):
    """Never answers: the attempt waits until it is cancelled."""

    async def send(self, outgoing: Outgoing) -> MemoryReply:
        self.sent.append(outgoing.provider.name)
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


# -- what an observer was told ---------------------------------------------------------------------

class CountingObserver(NullObserver):
    """Records request starts/finishes and attempts, to check the pairing contract."""

    __slots__ = ("attempts", "finished", "gaps", "malformed", "started", "tokens")

    def __init__(self) -> None:
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str, str]] = []
        self.attempts: list[tuple[str, str, str]] = []
        self.gaps: list[tuple[str, float]] = []
        self.malformed: list[str] = []
        self.tokens: list[tuple[str, str, int, int]] = []

    def request_started(self, route: str, client: str) -> None:
        self.started.append((route, client))

    def request_finished(self, route: str, client: str, outcome: str, duration_s: float) -> None:
        assert duration_s >= 0
        self.finished.append((route, client, outcome))

    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        self.attempts.append((route, provider, outcome))

    def stream_chunk_gap(self, provider: str, gap_s: float) -> None:
        assert gap_s >= 0
        self.gaps.append((provider, gap_s))

    def malformed_event(self, provider: str) -> None:
        self.malformed.append(provider)

    def tokens_used(self, route: str, provider: str, prompt: int, completion: int) -> None:
        self.tokens.append((route, provider, prompt, completion))

    def assert_paired(self) -> None:
        """Every start has exactly one finish with the same route and client."""
        assert sorted(self.started) == sorted((route, client) for route, client, _ in self.finished)


# -- policies ------------------------------------------------------------------------------------

def policy(providers: Iterable[str] | Mapping[str, Mapping[str, Any]], routes: Mapping[str, Any],
           env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    """A policy from plain mappings; providers point at unused .test URLs unless given."""
    blocks = {name: {"base_url": f"http://{name}.test/v1"} for name in providers} \
        if not isinstance(providers, Mapping) else {name: dict(block) for name, block in providers.items()}
    data = {"version": 1, "providers": blocks, "routes": dict(routes), **top}
    return parse_policy(yaml.safe_dump(data, sort_keys=False), source="<metrics-test>", env=dict(env or {}))


def route(*targets: str, **fields: Any) -> dict[str, Any]:
    """Targets `provider` (model `<provider>-model`) in failover order."""
    return {"targets": [{"provider": p, "model": f"{p}-model", "priority": i} for i, p in enumerate(targets)],
            "retry": {"base_interval_s": 0.001, "max_interval_s": 0.002}, **fields}
