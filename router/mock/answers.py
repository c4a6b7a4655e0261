"""What the fake provider answers for `Ok` and `Stream` faults: bodies and event lists, no I/O.

The server (server.py) decides *how* to send them (timing, cuts, stalls); this
module decides *what* they are, so both stay small and this part needs no aiohttp.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .faults import Ok, RequestView, Stream
from .responses import chunk, completion_body, split_evenly, sse, tool_call_arguments, usage_block


def last_user_text(view: RequestView) -> str:
    for message in reversed(view.messages):
        if message.get("role") == "user" and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def completion_for(fault: Ok, view: RequestView, *, completion_id: str, provider: str) -> dict[str, Any]:
    """A non-streamed chat completion (a tool call when the request has tools and the content is "TOOL")."""
    content = fault.content if fault.content is not None else f"Hello from {provider}"
    tool_call = None
    completion_text = content
    tool_name = view.tool_name if content == "TOOL" else None
    if tool_name is not None:
        arguments = tool_call_arguments(last_user_text(view))
        tool_call = {"id": f"call_{completion_id}", "type": "function",
                     "function": {"name": tool_name, "arguments": arguments}}
        completion_text = arguments
    return completion_body(
        completion_id=completion_id, created=int(time.time()), model=fault.model or view.model,
        content=content, tool_call=tool_call, extra=fault.extra,
        usage=usage_block(view.messages, completion_text) if fault.usage else None)


@dataclass(frozen=True)
class StreamScript:
    """The encoded events of one streamed answer, in the order a healthy provider sends them."""

    head: list[bytes]  # the role chunk (and a tool call's opening chunk)
    pieces: list[bytes]  # content (or tool-argument) chunks: where cuts, stalls and pacing apply
    finish: bytes  # the chunk carrying finish_reason
    usage: bytes  # the usage chunk (sent when asked for)


def stream_script(plan: Stream, view: RequestView, *, completion_id: str, provider: str) -> StreamScript:
    created, model = int(time.time()), plan.model or view.model

    def event(delta: Mapping[str, Any] | None, finish: str | None = None,
              usage: Mapping[str, int] | None = None, extra: Mapping[str, Any] | None = None) -> bytes:
        return sse(chunk(completion_id=completion_id, created=created, model=model, delta=delta,
                         finish_reason=finish, usage=usage, extra=extra))

    content = plan.content if plan.content is not None else f"Hello from {provider}"
    head = [event({"role": "assistant", "content": ""}, extra=plan.extra)]
    tool_name = view.tool_name if content == "TOOL" else None
    if tool_name is not None:
        completion_text = tool_call_arguments(last_user_text(view))
        head.append(event({"tool_calls": [{
            "index": 0, "id": f"call_{completion_id}", "type": "function",
            "function": {"name": tool_name, "arguments": ""}}]}))
        pieces = [event({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
                  for piece in split_evenly(completion_text, plan.chunks)]
        finish = "tool_calls"
    else:
        completion_text = content
        pieces = [event({"content": piece}) for piece in split_evenly(content, plan.chunks)]
        finish = "stop"
    return StreamScript(head=head, pieces=pieces, finish=event({}, finish),
                        usage=event(None, usage=usage_block(view.messages, completion_text)))
