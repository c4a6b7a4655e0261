"""Wire-format builders for the fake provider: the JSON bodies and SSE events.

Pure functions, no I/O, so the exact shapes are easy to read next to the seed
documents (AIMO's sample response, ASI1's extra top-level fields, OpenAI's
`chat.completion.chunk` stream and error objects).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = [
    "DONE_EVENT",
    "MALFORMED_EVENT",
    "STATUS_FOR_CODE",
    "chunk",
    "completion_body",
    "dumps",
    "error_body",
    "error_type_for",
    "estimate_tokens",
    "split_evenly",
    "sse",
    "tool_call_arguments",
    "usage_block",
]

DONE_EVENT = b"data: [DONE]\n\n"
# Truncated JSON a client parser must skip; the same shape a proxy produces when it
# splits an event in the middle.
MALFORMED_EVENT = b'data: {"choices": [\n\n'

# The HTTP status an error `code` goes with, for errors sent inside a 200 stream.
STATUS_FOR_CODE = {
    "invalid_request_error": 400,
    "context_length_exceeded": 400,
    "content_policy_violation": 400,
    "invalid_api_key": 401,
    "rate_limit_exceeded": 429,
    "server_error": 500,
    "service_unavailable": 503,
}

_DEFAULT_MESSAGES = {
    400: "Invalid request.",
    401: "Incorrect API key provided.",
    403: "You are not allowed to access this resource.",
    404: "The requested resource does not exist.",
    429: "Rate limit reached for requests. Please try again later.",
    500: "The server had an error while processing your request.",
    502: "Bad gateway.",
    503: "The server is overloaded or not ready yet.",
    504: "Gateway timeout.",
}


def dumps(obj: object) -> bytes:
    """Compact UTF-8 JSON, as providers send it (non-ASCII left unescaped)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()


def sse(payload: object) -> bytes:
    """One server-sent event in the exact `data: <json>\\n\\n` framing of the seeds."""
    return b"data: " + dumps(payload) + b"\n\n"


def split_evenly(text: str, pieces: int) -> list[str]:
    """Split `text` into at most `pieces` non-empty parts whose join is `text` exactly.

    Splits on characters (not bytes) so every event stays valid UTF-8.
    """
    count = min(max(pieces, 1), len(text))
    if count == 0:
        return []
    size, rest = divmod(len(text), count)
    out: list[str] = []
    pos = 0
    for i in range(count):
        step = size + (1 if i < rest else 0)
        out.append(text[pos:pos + step])
        pos += step
    return out


def estimate_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about four characters per token."""
    return max(1, math.ceil(len(text) / 4))


def usage_block(messages: Iterable[Mapping[str, Any]], completion: str) -> dict[str, int]:
    prompt_text = "".join(str(m.get("content") or "") for m in messages)
    prompt = estimate_tokens(prompt_text)
    done = estimate_tokens(completion) if completion else 0
    return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}


def tool_call_arguments(content_hint: str) -> str:
    """Arguments of the fake tool call: a small JSON object, long enough to stream in pieces."""
    return json.dumps({"query": content_hint, "limit": 3})


def completion_body(
    *,
    completion_id: str,
    created: int,
    model: str,
    content: str | None,
    tool_call: Mapping[str, Any] | None = None,
    usage: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A non-streamed `chat.completion` in the AIMO/OpenAI shape (ASI1 `extra` fields merged in)."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    finish = "stop"
    if tool_call is not None:
        message = {"role": "assistant", "content": None, "tool_calls": [dict(tool_call)]}
        finish = "tool_calls"
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    if extra:
        body.update(extra)
    return body


def chunk(
    *,
    completion_id: str,
    created: int,
    model: str,
    delta: Mapping[str, Any] | None,
    finish_reason: str | None = None,
    usage: Mapping[str, int] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One `chat.completion.chunk`; `delta=None` gives the usage-only chunk (empty `choices`)."""
    body: dict[str, Any] = {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [
            {"index": 0, "delta": dict(delta), "finish_reason": finish_reason}],
    }
    if usage is not None:
        body["usage"] = dict(usage)
    if extra:
        body.update(extra)
    return body


def error_type_for(status: int) -> str:
    if status == 429:
        return "requests"  # what api.openai.com puts in `type` for request-rate 429s
    if status in (401, 400, 404, 409, 413, 422):
        return "invalid_request_error"
    if status == 403:
        return "permission_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def error_body(status: int, *, message: str | None = None, code: str | None = None,
               error_type: str | None = None, param: str | None = None) -> dict[str, Any]:
    """The OpenAI error object `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {
        "message": message if message is not None else _DEFAULT_MESSAGES.get(status, "Error."),
        "type": error_type if error_type is not None else error_type_for(status),
        "param": param,
        "code": code,
    }}
