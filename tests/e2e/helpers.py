"""Helpers for the end-to-end scenarios: policies for fake providers, request bodies, streams.

Policies are written as YAML and parsed with the real loader, so every scenario also
goes through the same validation a policy file does. Timeouts and backoffs are small
so the whole suite stays fast; a scenario overrides only what it is about.

Attempts and their timing are always read from the fake providers (`FakeProvider.hits`),
never from the router's own counters.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import yaml

from router import ChatStream, Policy, SseEvent, StreamInterrupted
from router.mock import FakeProvider
from router.policy import parse_policy

ROUTE = "chat"
FAST_TIMEOUTS: dict[str, float] = {"connect_s": 1.0, "first_byte_s": 0.5, "idle_s": 0.5}
FAST_RETRY: dict[str, float] = {"base_interval_s": 0.01, "max_interval_s": 0.05}
# Never opens during a scenario unless the scenario is about the breaker.
LENIENT_BREAKER: dict[str, float] = {"consecutive_failures": 100, "base_ejection_s": 1.0, "max_ejection_s": 1.0}
AIMO_MODEL = "8W7X1tGnWh9CXwnPD7wgke31Gdcqmex4LapJvQ2afBUq:deepseek-chat-v3"


def provider_entry(fake: FakeProvider, **overrides: Any) -> dict[str, Any]:
    """A provider block pointing at `fake`, with fast timeouts; nested blocks are merged."""
    entry: dict[str, Any] = {"base_url": fake.base_url, "timeouts": dict(FAST_TIMEOUTS),
                             "breaker": dict(LENIENT_BREAKER)}
    for key, value in overrides.items():
        if isinstance(value, Mapping) and isinstance(entry.get(key), dict):
            entry[key] = {**entry[key], **value}
        else:
            entry[key] = value
    return entry


def make_policy(providers: Mapping[str, Mapping[str, Any]], routes: Mapping[str, Mapping[str, Any]], *,
                env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    """Dump a policy mapping to YAML and load it with the real loader."""
    data: dict[str, Any] = {"version": 1, "providers": dict(providers), "routes": dict(routes), **top}
    text = yaml.safe_dump(data, sort_keys=False)
    return parse_policy(text, source="<e2e>", env=dict(env or {}))


def tiered_policy(*fakes: FakeProvider, retry: Mapping[str, Any] | None = None,
                  providers: Mapping[str, Mapping[str, Any]] | None = None,
                  models: Mapping[str, str] | None = None, route: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, **top: Any) -> Policy:
    """Route `chat` over `fakes` in failover order (priority 0, 1, ...), one target each.

    `providers` holds per-provider overrides by fake name, `models` the upstream model per
    provider (default `<name>-model`), `retry` and `route` override the route's settings.
    """
    entries = {fake.name: provider_entry(fake, **(providers or {}).get(fake.name, {})) for fake in fakes}
    targets = [{"provider": fake.name, "model": (models or {}).get(fake.name, f"{fake.name}-model"),
                "priority": index} for index, fake in enumerate(fakes)]
    route_block: dict[str, Any] = {"targets": targets, "retry": {**FAST_RETRY, **(retry or {})},
                                   "deadline_s": 10, **(route or {})}
    return make_policy(entries, {ROUTE: route_block}, env=env, **top)


def body(content: str = "Hello", *, model: str = ROUTE, **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **fields}


def stream_body(content: str = "Hello", **fields: Any) -> dict[str, Any]:
    return body(content, stream=True, **fields)


class MaxJitter(random.Random):
    """A random source whose full-jitter backoff is always the ceiling: deterministic sleeps."""

    def uniform(self, a: float, b: float) -> float:
        return b


def payload(event: SseEvent) -> dict[str, Any] | None:
    try:
        value = json.loads(event.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def text_of(events: Sequence[SseEvent]) -> str:
    """The concatenated `delta.content` of choice 0 over all events."""
    parts: list[str] = []
    for event in events:
        data = payload(event)
        if not data:
            continue
        for choice in data.get("choices") or ():
            if choice.get("index", 0) == 0:
                content = (choice.get("delta") or {}).get("content")
                if isinstance(content, str):
                    parts.append(content)
    return "".join(parts)


def is_error_event(event: SseEvent) -> bool:
    data = payload(event)
    return bool(data and data.get("error"))


async def collect(stream: ChatStream) -> tuple[list[SseEvent], StreamInterrupted | None]:
    """Every event the caller sees, and the StreamInterrupted that ended it (if any)."""
    events: list[SseEvent] = []
    try:
        async with stream:
            async for event in stream:
                events.append(event)
    except StreamInterrupted as interrupted:
        return events, interrupted
    return events, None


def hits_on(fake: FakeProvider, status: int | None = None) -> int:
    return sum(1 for hit in fake.hits if status is None or hit.status == status)


async def wait_for(predicate: Callable[[], bool], within_s: float = 1.0) -> None:
    """Poll `predicate` (e.g. over several fakes) until it holds; TimeoutError after `within_s`."""
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - the condition spans several fakes, no single event to await
            await asyncio.sleep(0.005)


async def quiet_for(seconds: float) -> None:
    """Let the loop run so that any late attempt would have time to reach a fake."""
    await asyncio.sleep(seconds)


def now() -> float:
    """The fakes stamp hits with time.monotonic(); scenarios use the same clock."""
    return time.monotonic()
