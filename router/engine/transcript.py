"""What a stream has shown its caller so far, and the small parsers the relay uses on each event.

Kept apart from the relay (streaming.py) so the commit-point logic there reads on its own.
"""

from __future__ import annotations

from typing import Any

from router import jsonio
from router.upstream.sse import SseEvent


class Transcript:
    """What the caller has been shown so far, enough to continue or to finish honestly."""

    __slots__ = ("chunks", "continuable", "finished", "id", "text", "usage")

    def __init__(self) -> None:
        self.text: list[str] = []
        self.finished = False
        self.continuable = True  # False once tool calls or several choices were streamed
        self.usage: object = None
        self.id: str | None = None
        self.chunks = 0

    def track(self, payload: dict[str, Any]) -> None:
        # Runs once per event: exact-type checks (a decoded payload holds only plain dicts, lists, str).
        self.chunks += 1
        if self.id is None:
            chunk_id = payload.get("id")
            if chunk_id.__class__ is str:
                self.id = chunk_id
        usage = payload.get("usage")
        if usage:
            self.usage = usage
        choices = payload.get("choices")
        if choices.__class__ is not list:
            return
        for choice in choices:
            if choice.__class__ is not dict:
                continue
            if choice.get("finish_reason"):
                self.finished = True
            if choice.get("index", 0) != 0:
                self.continuable = False
                continue
            delta = choice.get("delta")
            if delta.__class__ is dict:
                content = delta.get("content")
                if content.__class__ is str:
                    self.text.append(content)
                if delta.get("tool_calls") or delta.get("function_call"):
                    self.continuable = False

    def track_plain(self, texts: list[str], count: int) -> None:
        """`count` events shown to carry nothing but these texts (engine/plain_runs.py)."""
        self.chunks += count
        self.text += texts


def payload_of(event: SseEvent) -> dict[str, Any] | None:
    try:
        value = jsonio.loads(event.data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def is_empty_delta(payload: dict[str, Any]) -> bool:
    """A continuation's opening role-only chunk: the caller already had one."""
    choices = payload.get("choices")
    if not isinstance(choices, list) or not choices or payload.get("usage"):
        return False
    for choice in choices:
        if not isinstance(choice, dict) or choice.get("finish_reason"):
            return False
        delta = choice.get("delta") or {}
        if not isinstance(delta, dict) or delta.get("content") or delta.get("tool_calls"):
            return False
    return True
