"""Faults the fake provider can apply to one attempt.

Faults are small frozen dataclasses (values, easy to script and print). Three of
them look at the request before deciding (`RejectPrefill`, `Continue`,
`RandomFaults`); `resolve()` turns those into a concrete fault. The server in
`server.py` interprets concrete faults; this module does no I/O so the CLI and
policy code can build fault scripts without importing aiohttp.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "Concrete",
    "Continue",
    "Fault",
    "Hang",
    "Ok",
    "RandomFaults",
    "RejectPrefill",
    "RequestView",
    "Reset",
    "SlowFirstByte",
    "Status",
    "Stream",
    "resolve",
]


@dataclass(frozen=True)
class RequestView:
    """Read-only questions the faults ask about a parsed chat-completions request."""

    payload: Mapping[str, Any]

    @property
    def model(self) -> str:
        return str(self.payload.get("model", ""))

    @property
    def stream(self) -> bool:
        return self.payload.get("stream") is True

    @property
    def include_usage(self) -> bool:
        options = self.payload.get("stream_options")
        return isinstance(options, Mapping) and options.get("include_usage") is True

    @property
    def messages(self) -> Sequence[Mapping[str, Any]]:
        messages = self.payload.get("messages")
        if not isinstance(messages, list):
            return []
        return [m for m in messages if isinstance(m, Mapping)]

    @property
    def prefill(self) -> str | None:
        """The content of a trailing assistant message (a prefill), if any."""
        messages = self.messages
        if messages and messages[-1].get("role") == "assistant":
            content = messages[-1].get("content")
            return content if isinstance(content, str) else ""
        return None

    @property
    def tool_name(self) -> str | None:
        """The function the model would call: the forced one, else the first declared."""
        choice = self.payload.get("tool_choice")
        if isinstance(choice, Mapping):
            function = choice.get("function")
            if isinstance(function, Mapping) and isinstance(function.get("name"), str):
                return str(function["name"])
        tools = self.payload.get("tools")
        if not isinstance(tools, list) or not tools or choice == "none":
            return None
        first = tools[0].get("function") if isinstance(tools[0], Mapping) else None
        name = first.get("name") if isinstance(first, Mapping) else None
        return name if isinstance(name, str) else "tool"


@dataclass(frozen=True)
class Ok:
    """A normal answer: JSON, or SSE when the request asks for `stream: true`.

    `content=None` means "Hello from <provider name>". With `tools` in the request
    and `content == "TOOL"` the answer is a tool call. `delay_s` delays the
    whole answer (headers included). `extra` merges top-level fields (ASI1's
    `thought`, `executable_data`, ...) into the body, or into the first chunk of
    a stream. `model=None` echoes the requested model.
    """

    content: str | None = None
    delay_s: float = 0.0
    extra: Mapping[str, Any] | None = None
    usage: bool = True
    chunks: int = 4
    model: str | None = None
    label: str = "ok"
    interval_s: float = 0.0  # between streamed chunks
    # Extra response headers of a JSON answer (a provider's x-ratelimit-* fields, say).
    headers: Mapping[str, str] | None = None

    @property
    def name(self) -> str:
        return self.label


@dataclass(frozen=True)
class Status:
    """An error status with an OpenAI error body (or `body` verbatim, for HTML and garbage)."""

    status: int
    error_code: str | None = None
    message: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes | str | None = None
    error_type: str | None = None
    param: str | None = None
    label: str | None = None

    @property
    def name(self) -> str:
        return self.label or f"status_{self.status}"

    @classmethod
    def rate_limited(cls, retry_after: str | float | None = "2", *,
                     headers: Mapping[str, str] | None = None) -> Status:
        """429; `retry_after` may be seconds or an HTTP-date; None sends no Retry-After."""
        all_headers = dict(headers or {})
        if retry_after is not None:
            all_headers["Retry-After"] = str(retry_after)
        return cls(429, "rate_limit_exceeded", headers=all_headers)

    @classmethod
    def server_error(cls, status: int = 500) -> Status:
        return cls(status, "server_error")

    @classmethod
    def unavailable(cls, retry_after: str | None = None) -> Status:
        return cls(503, "service_unavailable",
                   headers={"Retry-After": retry_after} if retry_after is not None else {})

    @classmethod
    def context_length(cls, limit: int = 8192) -> Status:
        return cls(400, "context_length_exceeded", param="messages",
                   message=f"This model's maximum context length is {limit} tokens. However, your "
                           "messages resulted in more tokens. Please reduce the length of the messages.")

    @classmethod
    def content_policy(cls, reason: str = "the prompt was flagged as unsafe") -> Status:
        return cls(400, "content_policy_violation",
                   message=f"Your request was rejected by the content policy: {reason}")

    @classmethod
    def unauthorized(cls) -> Status:
        return cls(401, "invalid_api_key", message="Incorrect API key provided.")


@dataclass(frozen=True)
class Reset:
    """Abort the TCP connection before any response byte.

    `rst=True` sends a real RST (SO_LINGER 0): the client sees ECONNRESET.
    `rst=False` closes with FIN: the client sees "server disconnected".
    """

    rst: bool = True
    label: str = "reset"

    @property
    def name(self) -> str:
        return self.label


@dataclass(frozen=True)
class Hang:
    """Read the request, then never answer; the hit records when the client gives up."""

    name: ClassVar[str] = "hang"


@dataclass(frozen=True)
class SlowFirstByte:
    """Wait `delay_s` before sending anything (no headers either), then apply `then`."""

    delay_s: float
    then: Fault = field(default_factory=Ok)

    name: ClassVar[str] = "slow_first_byte"


@dataclass(frozen=True)
class Stream:
    """A 200 `text/event-stream` answer, with the stream faults as options.

    Headers go out at once; the first event after `first_delay_s` (slow first
    token). Events: role chunk, `chunks` content pieces (joined they equal
    `content`), finish chunk, optional usage chunk, `data: [DONE]`.

    - `cut_after=N`: abort the connection after N content pieces.
    - `stall_after=N`: after N pieces send nothing more, keep the connection open.
    - `malformed_at=K`: an extra broken event right before piece K (1-based);
      the content stays complete.
    - `send_done=False`: close cleanly after the finish chunk, without [DONE];
      with `send_finish_reason=False` too, a clean EOF mid-answer (truncated).
    - `error_first=True`: the first event is `data: {"error": {...}}` (code
      `error_code`), then [DONE].

    Sent as SSE even when the request did not ask for a stream, as a
    misbehaving provider would; use `Ok` to follow the request's `stream` flag.
    """

    content: str | None = None
    chunks: int = 5
    interval_s: float = 0.0
    first_delay_s: float = 0.0
    cut_after: int | None = None
    stall_after: int | None = None
    malformed_at: int | None = None
    send_done: bool = True
    send_finish_reason: bool = True
    error_first: bool = False
    error_code: str = "server_error"
    usage: bool = False
    extra: Mapping[str, Any] | None = None
    model: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if self.chunks < 1:
            raise ValueError(f"Stream.chunks must be >= 1, got {self.chunks}")
        if self.cut_after is not None and self.stall_after is not None:
            raise ValueError("Stream: cut_after and stall_after are exclusive")
        for key in ("cut_after", "stall_after"):
            value = getattr(self, key)
            if value is not None and value < 0:
                raise ValueError(f"Stream.{key} must be >= 0, got {value}")
        if self.malformed_at is not None and self.malformed_at < 1:
            raise ValueError(f"Stream.malformed_at is 1-based, got {self.malformed_at}")

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        if self.error_first:
            return "stream_error_first"
        if self.cut_after is not None:
            return "stream_cut"
        if self.stall_after is not None:
            return "stream_stall"
        if self.malformed_at is not None:
            return "stream_malformed"
        if not self.send_finish_reason and not self.send_done:
            return "stream_truncated"
        if not self.send_done:
            return "stream_no_done"
        return "stream"


@dataclass(frozen=True)
class RejectPrefill:
    """A provider that refuses a trailing assistant message with 400 `invalid_prefill`."""

    then: Fault = field(default_factory=Ok)

    name: ClassVar[str] = "reject_prefill"

    def pick(self, request: RequestView) -> Fault:
        if request.prefill is None:
            return self.then
        return Status(400, "invalid_prefill", message="assistant prefill is not supported",
                      param="messages", label="reject_prefill")


@dataclass(frozen=True)
class Continue:
    """A prefill-aware provider: continues `full_content` after the assistant prefix sent.

    When the trailing assistant message is a prefix P of `full_content`, only
    the rest is answered (streamed or not), so a router that stitches prefix and
    continuation must produce `full_content` exactly once.
    """

    full_content: str
    chunks: int = 5

    name: ClassVar[str] = "continue"

    def pick(self, request: RequestView) -> Fault:
        prefix = request.prefill
        rest = self.full_content
        if prefix is not None and self.full_content.startswith(prefix):
            rest = self.full_content[len(prefix):]
        return Ok(content=rest, chunks=self.chunks, label="continue")


_NAMED_FAULTS = ("reset", "hang", "slow", "cut", "stall", "malformed", "error_first")


@dataclass(frozen=True)
class RandomFaults:
    """Pick a fault per request from `rates` (probabilities summing to <= 1), else `base`.

    Keys are HTTP statuses ("429", "500", "503", ...) or one of
    reset, hang, slow (`slow_s` before `base`), cut, stall, malformed,
    error_first. Stream-only faults fall back to their non-stream
    equivalent (cut -> reset, stall -> hang, malformed/error_first -> base)
    for non-streamed requests. One draw per request from a private
    `random.Random(seed)`, so a seed gives a reproducible sequence.
    """

    rates: Mapping[str, float]
    retry_after: str | None = "1"
    seed: int | None = None
    base: Fault = field(default_factory=Ok)
    slow_s: float = 2.0
    _rng: random.Random = field(init=False, repr=False, compare=False)

    name: ClassVar[str] = "random"

    def __post_init__(self) -> None:
        for key, rate in self.rates.items():
            if not (key in _NAMED_FAULTS or (key.isdigit() and 100 <= int(key) <= 599)):
                raise ValueError(f"RandomFaults: unknown fault {key!r}; use an HTTP status or one of "
                                 f"{', '.join(_NAMED_FAULTS)}")
            if not 0.0 <= rate <= 1.0:
                raise ValueError(f"RandomFaults: rate of {key!r} must be in [0, 1], got {rate}")
        if sum(self.rates.values()) > 1.0 + 1e-9:
            raise ValueError("RandomFaults: rates sum to more than 1")
        # The dataclass is frozen for the caller; the generator is its only (private) state.
        object.__setattr__(self, "_rng", random.Random(self.seed))

    def pick(self, request: RequestView) -> Fault:
        draw = self._rng.random()
        for key, rate in self.rates.items():
            if draw < rate:
                return self._fault_for(key, request.stream)
            draw -= rate
        return self.base

    def _fault_for(self, key: str, stream: bool) -> Fault:
        if key.isdigit():
            status = int(key)
            if status == 429:
                return Status.rate_limited(self.retry_after)
            return Status(status, "server_error" if status >= 500 else None)
        if key == "reset":
            return Reset()
        if key == "hang":
            return Hang()
        if key == "slow":
            return SlowFirstByte(self.slow_s, then=self.base)
        if not stream:
            return {"cut": Reset(), "stall": Hang()}.get(key, self.base)
        return {
            "cut": Stream(cut_after=1),
            "stall": Stream(stall_after=1),
            "malformed": Stream(malformed_at=1),
        }.get(key, Stream(error_first=True))


Concrete: TypeAlias = Ok | Status | Reset | Hang | SlowFirstByte | Stream
Fault: TypeAlias = Concrete | RejectPrefill | Continue | RandomFaults


def resolve(fault: Fault, request: RequestView) -> Concrete:
    """Ask request-dependent faults to decide until a concrete fault remains."""
    while isinstance(fault, RejectPrefill | Continue | RandomFaults):
        fault = fault.pick(request)
    return fault

