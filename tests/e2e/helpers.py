"""Helpers for the end-to-end scenarios: request bodies, streams, waiting (policies:
tests/support/policies.py, `tiered_policy`).

Attempts and their timing are always read from the fake providers (`FakeProvider.hits`),
never from the router's own counters.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

from router import ChatStream, SseEvent, StreamInterrupted
from router.mock import FakeProvider

ROUTE = "chat"


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
