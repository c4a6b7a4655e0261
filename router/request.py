"""The client's chat request as an immutable value, and the upstream bodies built from it.

The body is forwarded byte-faithfully: only the value of the top-level `model`
key is spliced out and replaced, so unknown vendor fields, key order, number
formatting and escapes reach the provider exactly as the client sent them.
Model ids are opaque strings (never split on ':' or '/').
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from router.errors import InvalidRequest

# Chat prompts are ~4 characters per token; good enough for a reservation that is
# reconciled with the provider's `usage` afterwards.
_CHARS_PER_TOKEN = 4
DEFAULT_COMPLETION_ESTIMATE = 512

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_STRING_RE = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)  # for short prefixes only: ~40 ns a byte
_STRUCT_RE = re.compile(rb'["{}\[\]]')
_WS = b" \t\r\n"
# orjson's decoding of a request is kept only when `json` is certain to agree: nesting json can follow
# (it gives up near sys.getrecursionlimit() levels). A body this short, or a value nested less deep, is.
_ORJSON_MAX_BRACKETS = 500


def new_request_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4().hex, a quarter of the cost


def clean_request_id(value: str | None) -> str:
    """Keep a caller's id only if it is safe to log and forward; otherwise make one."""
    if value and _REQUEST_ID_RE.fullmatch(value):
        return value
    return new_request_id()


@dataclass(frozen=True, slots=True)
class ChatRequest:
    body: bytes
    payload: Mapping[str, Any]
    model: str
    stream: bool
    max_tokens: int | None
    request_id: str
    _model_span: tuple[int, int] | None

    @property
    def token_estimate(self) -> int:
        """Prompt estimate + completion cap: what a tokens-per-minute limit reserves."""
        completion = self.max_tokens if self.max_tokens is not None else DEFAULT_COMPLETION_ESTIMATE
        return len(self.body) // _CHARS_PER_TOKEN + completion

    def body_for(self, upstream_model: str) -> bytes:
        """The client's body with only `model` replaced."""
        if upstream_model == self.model:
            return self.body
        encoded = _encoded_model(upstream_model) if len(upstream_model) <= 200 else _encoded(upstream_model)
        if self._model_span is None:  # no top-level key found by the scanner: re-encode (never expected)
            return json.dumps({**_exact(self.body), "model": upstream_model}, ensure_ascii=False).encode()
        start, end = self._model_span
        return self.body[:start] + encoded + self.body[end:]

    def continuation_body(self, upstream_model: str, text_so_far: str) -> bytes:
        """The conversation plus the text streamed so far as an assistant prefill."""
        original = _exact(self.body)
        messages = [*original["messages"], {"role": "assistant", "content": text_so_far}]
        payload = {**original, "model": upstream_model, "messages": messages}
        return json.dumps(payload, ensure_ascii=False).encode()


def _encoded(model: str) -> bytes:
    return json.dumps(model, ensure_ascii=False).encode()


# Upstream model names mostly come from the policy, a few strings; a route that passes the client's
# name through could feed it any, hence the bounded size (of the cache, and of what is kept in it).
_encoded_model = functools.lru_cache(maxsize=1024)(_encoded)


def _exact(raw: bytes) -> dict[str, Any]:
    """The body decoded by `json`: every number exact, for what is re-encoded and sent on."""
    return json.loads(raw.decode("utf-8"))  # type: ignore[no-any-return]


def parse_chat_request(body: bytes | Mapping[str, Any], *, request_id: str | None = None) -> ChatRequest:
    """Validate a chat-completions body. Raises InvalidRequest naming the bad parameter.

    A body is decoded by orjson (~4x faster) when that cannot change the outcome: what is accepted,
    and every error, must be exactly `json`'s. So orjson is skipped for deep nesting (see
    `_ORJSON_MAX_BRACKETS`), and anything orjson or the validation refuses is decided again with
    `json` (orjson refuses NaN, which json accepts, and turns integers past 64 bits into floats,
    which `max_tokens` validation would refuse). Re-encoded bodies decode with `json` (`_exact`)."""
    if not isinstance(body, bytes | bytearray | memoryview) and isinstance(body, Mapping):  # bytes: no ABC check
        payload = dict(body)
        try:
            raw = json.dumps(payload, ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"request body is not JSON-serialisable: {exc}") from None
        return _validated(raw, payload, request_id)
    raw = bytes(body)
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    else:
        # Counting brackets scanned the whole body twice (~0.1 ms for 256 KB): the decoded value's
        # containers are far fewer than its bytes, and short bodies cannot nest that deep at all.
        if isinstance(payload, dict) and (len(raw) <= _ORJSON_MAX_BRACKETS or _shallow(payload)):
            try:
                return _validated(raw, payload, request_id)
            except InvalidRequest:
                pass  # decided again by json below, so the error is json's
    try:
        payload = json.loads(raw.decode("utf-8"))  # RFC 8259: JSON on the wire is UTF-8
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("request body must be a JSON object")
    return _validated(raw, payload, request_id)


def _shallow(value: object) -> bool:
    """True if `value` nests fewer than _ORJSON_MAX_BRACKETS containers deep (where json agrees with orjson)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth >= _ORJSON_MAX_BRACKETS:
            return False
        children = item.values() if isinstance(item, dict) else item
        for child in children:  # type: ignore[attr-defined]
            if isinstance(child, dict | list) and child:
                stack.append((child, depth + 1))
    return True


def _validated(raw: bytes, payload: dict[str, Any], request_id: str | None) -> ChatRequest:
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("`model` is required and must be a non-empty string", param="model")
    messages = payload.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("`messages` is required and must be a non-empty array", param="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InvalidRequest(f"`messages[{index}]` must be an object with a string `role`",
                                 param=f"messages[{index}]")
    stream = payload.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise InvalidRequest("`stream` must be a boolean", param="stream")
    max_tokens = _optional_positive_int(payload, "max_tokens")
    if max_tokens is None:
        max_tokens = _optional_positive_int(payload, "max_completion_tokens")
    span = _top_level_value_span(raw, b'"model"')
    return ChatRequest(body=raw, payload=payload, model=model, stream=stream, max_tokens=max_tokens,
                       request_id=clean_request_id(request_id), _model_span=span)


def _optional_positive_int(payload: Mapping[str, Any], key: str) -> int | None:
    value = payload.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"`{key}` must be a positive integer", param=key)
    return value


def _skip_ws(raw: bytes, pos: int) -> int:
    while pos < len(raw) and raw[pos] in _WS:
        pos += 1
    return pos


def _string_end(raw: bytes, pos: int) -> int:
    """End offset of the JSON string whose opening quote is at `pos` (len(raw) if unterminated).

    Jumps from quote to quote with bytes.find and counts the backslashes before each: a 256 KB
    prompt is a few C-level searches, where a regular expression stepping over every character
    took ~10 ms."""
    start = pos + 1
    while True:
        quote = raw.find(b'"', start)
        if quote < 0:
            return len(raw)
        back = quote - 1
        while back > pos and raw[back] == 92:  # backslash
            back -= 1
        if (quote - 1 - back) % 2 == 0:  # an even run of backslashes: the quote is not escaped
            return quote + 1
        start = quote + 1


def _skip_value(raw: bytes, pos: int) -> int:
    """End offset of the JSON value starting at `pos` (the body is already known to be valid JSON)."""
    first = raw[pos:pos + 1]
    if first == b'"':
        return _string_end(raw, pos)
    if first in (b"{", b"["):
        depth = 0
        cursor = pos
        while (match := _STRUCT_RE.search(raw, cursor)) is not None:
            char = match.group()
            if char == b'"':  # jump over the whole string so brackets inside it do not count
                cursor = _string_end(raw, match.start())
                continue
            depth += 1 if char in (b"{", b"[") else -1
            cursor = match.end()
            if depth == 0:
                return cursor
        return len(raw)
    end = pos
    while end < len(raw) and raw[end] not in b",}] \t\r\n":
        end += 1
    return end


def _top_level_value_span(raw: bytes, key: bytes) -> tuple[int, int] | None:
    """Span of the value of a top-level key (see `_walk_top_level`), found the cheap way when possible.

    Fast path: look only at the places where the key's bytes occur and check that each is a
    top-level key (depth 1 once complete strings are removed from what precedes it). A body
    with `\\u` escapes could spell the key differently, so it takes the full walk.
    """
    # Many occurrences would make the prefix checks quadratic, and a long prefix costs the regular
    # expression ~40 ns a byte (the OpenAI SDK sends `messages` before `model`): the walk is linear.
    if len(raw) > 4096 or b"\\u" in raw or raw.count(key) > 4:
        return _walk_top_level(raw, key)
    found: tuple[int, int] | None = None
    start = raw.find(key)
    while start != -1:
        stripped = _STRING_RE.sub(b"", raw[:start])
        after = _skip_ws(raw, start + len(key))
        if b'"' not in stripped and raw[after:after + 1] == b":" and \
                stripped.count(b"{") + stripped.count(b"[") - stripped.count(b"}") - stripped.count(b"]") == 1:
            if found is not None:
                raise InvalidRequest("`model` appears more than once in the request body", param="model")
            value_start = _skip_ws(raw, after + 1)
            found = (value_start, _skip_value(raw, value_start))
        start = raw.find(key, start + 1)
    return found


def _walk_top_level(raw: bytes, key: bytes) -> tuple[int, int] | None:
    """Span of the value of a top-level key, found without decoding the whole body.

    Duplicate top-level `model` keys are refused: a body must not be able to say one
    thing to our validation and another to a provider's parser.
    """
    found: tuple[int, int] | None = None
    pos = _skip_ws(raw, 0)
    if raw[pos:pos + 1] != b"{":
        return None
    pos += 1
    while True:
        pos = _skip_ws(raw, pos)
        if raw[pos:pos + 1] != b'"':
            return found
        key_end = _string_end(raw, pos)
        raw_key = raw[pos:key_end]
        pos = _skip_ws(raw, key_end) + 1  # past ':'
        pos = _skip_ws(raw, pos)
        end = _skip_value(raw, pos)
        if raw_key == key or (b"\\" in raw_key and json.loads(raw_key) == json.loads(key)):
            if found is not None:
                raise InvalidRequest("`model` appears more than once in the request body", param="model")
            found = (pos, end)
        pos = _skip_ws(raw, end)
        if raw[pos:pos + 1] != b",":
            return found
        pos += 1
