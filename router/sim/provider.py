"""What a simulated provider does with one attempt: the profile's decisions, in one place.

Both fakes ask `ProviderModel.decide(t, stream)`: the in-memory client of `router simulate`
(client.py, on virtual time) and the HTTP fake of the agreement test (http_fake.py, on real
time over loopback). So the two differ only in time and I/O, never in what a provider decides.

The rules, in the order they are applied to each attempt that reaches the provider:

1. an outage in progress: `refused` (the connection is refused at once), `503` (a 503 answer,
   after the latency draw like any answer) or `silent` (it accepts and never answers);
2. `limit_per_min`: a sliding 60 s window of the attempts it accepted (those past this step);
   beyond the limit, a 429 with `Retry-After` = whole seconds until the oldest leaves the window;
3. `errors`: one uniform draw against the cumulative shares: that status (a 429 carries
   `Retry-After: 1`), else a success;
4. a stream that succeeds stalls with `stall_percent`: its first event, then nothing, ever;
5. one log-normal latency draw: the time to the answer's head. A JSON body and a stream's
   first event come with it; the rest of a stream follows STREAM_GAP_S later, in one read.

A provider of the policy that the profile does not name answers every attempt at once and
never fails (`ProviderModel.instant`), a stream in one read.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections import deque

from router.sim.latency import LogNormal
from router.sim.profile import LIMIT_WINDOW_S, ProviderFaults

# A streamed answer comes in two reads: the first event (role and first words) at the latency draw,
# then the rest (more words, the finish_reason chunk, usage, [DONE]) this long after it. More reads
# would cost a wake-up of the whole relay each and decide nothing: only the first event (the commit
# point) and a stall change what the router does. A stalled stream sends its first read only.
STREAM_GAP_S = 0.3
STALL_AFTER_READS = 1
LIMIT_RETRY_AFTER_MIN_S = 1

# Decision kinds.
ANSWER = "answer"  # a 2xx: JSON, or a stream
STATUS = "status"  # an error status
REFUSED = "refused"  # connection refused
SILENT = "silent"  # accepted, never answered


class Decision:
    """One attempt's fate. A plain slotted class: one is made per attempt, and a frozen dataclass's
    `__init__` costs a `object.__setattr__` a field."""

    __slots__ = ("delay_s", "kind", "label", "retry_after", "stalled", "status")

    def __init__(self, kind: str, delay_s: float = 0.0, status: int = 200, *, retry_after: int | None = None,
                 stalled: bool = False, label: str = "ok") -> None:
        self.kind = kind
        self.delay_s = delay_s  # until the head (a JSON body, a stream's first read), from the attempt
        self.status = status
        self.retry_after = retry_after  # seconds, with a 429
        self.stalled = stalled  # a stream that stops after STALL_AFTER_READS reads
        self.label = label  # what happened, for the per-provider counts: ok, stall, error_503, limit_429, ...

    def __repr__(self) -> str:
        return (f"Decision({self.kind!r}, delay_s={self.delay_s:.3f}, status={self.status}, "
                f"retry_after={self.retry_after}, stalled={self.stalled}, label={self.label!r})")


class Answers:
    """The bytes one provider sends, built once: a JSON completion, a stream's reads, error bodies."""

    def __init__(self, provider: str) -> None:
        self.json = json.dumps({
            "id": f"sim-{provider}", "object": "chat.completion", "model": provider,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f"Hello from {provider}."},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 4}}, separators=(",", ":")).encode()

        def chunk(delta: dict[str, str] | None, finish: str | None = None, **extra: object) -> bytes:
            choices = [] if delta is None else [{"index": 0, "delta": delta, "finish_reason": finish}]
            payload = {"id": f"sim-{provider}", "object": "chat.completion.chunk", "model": provider,
                       "choices": choices, **extra}
            return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"

        self.stream_reads: tuple[bytes, ...] = (
            chunk({"role": "assistant", "content": "Hello"}),
            chunk({"content": " from"}) + chunk({"content": f" {provider}."}) + chunk({}, "stop")
            + chunk(None, usage={"prompt_tokens": 8, "completion_tokens": 4}) + b"data: [DONE]\n\n",
        )
        self.stream_whole = b"".join(self.stream_reads)
        self.json_reads = (self.json,)  # an answer as the reads that bring it
        self.stream_whole_reads = (self.stream_whole,)
        self._errors: dict[int, bytes] = {}

    def error(self, status: int) -> bytes:
        body = self._errors.get(status)
        if body is None:
            kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
            body = self._errors[status] = json.dumps(
                {"error": {"message": f"simulated {status}", "type": kind, "code": None}}).encode()
        return body


_OK = Decision(ANSWER)
_ERROR_LABELS = {status: f"error_{status}" for status in range(400, 600)}
_REFUSED = Decision(REFUSED, label="outage_refused")
_SILENT = Decision(SILENT, label="outage_silent")


class ProviderModel:
    """One provider's decisions (see the module docstring), drawn from its own seeded random source so
    its sequence does not depend on how many attempts the other providers get."""

    def __init__(self, name: str, faults: ProviderFaults | None, *, seed: int) -> None:
        self.name = name
        self.faults = faults
        self.instant = faults is None
        self.answers = Answers(name)
        self.counts: dict[str, int] = {}  # decision label -> attempts
        self._rng = random.Random(f"{seed}:{name}")
        faults = faults or ProviderFaults()
        latency: LogNormal = faults.latency
        self._median, self._sigma = latency.median, latency.sigma  # drawn inline: one draw an attempt
        self._stall = faults.stall_percent / 100.0
        self._limit = faults.limit_per_min
        self._window: deque[float] = deque()
        self._outages = faults.outages
        self._outage_index = 0
        thresholds, statuses, total = [], [], 0.0
        for status, share in faults.errors.items():
            if share > 0:
                total += share
                thresholds.append(total)
                statuses.append(status)
        self._thresholds, self._statuses = thresholds, statuses

    def outage_at(self, t: float) -> str | None:
        """The kind of the outage in progress at `t` (seconds since the start), None if none."""
        outages, index = self._outages, self._outage_index
        if index and t < outages[index - 1].end_s:
            index = 0  # asked about an earlier time: search from the first (attempts come in time order)
        while index < len(outages) and outages[index].end_s <= t:
            index += 1
        self._outage_index = index
        if index < len(outages) and outages[index].start_s <= t:
            return outages[index].kind
        return None

    def healthy(self, t: float) -> bool:
        """What a health probe (`GET /models`) would find at `t`: no outage in progress."""
        return self.outage_at(t) is None

    def decide(self, t: float, stream: bool) -> Decision:
        """What the provider does with an attempt that reaches it `t` seconds after the start."""
        decision = self._decide(t, stream)
        counts, label = self.counts, decision.label
        counts[label] = counts.get(label, 0) + 1
        return decision

    def _delay(self) -> float:
        """One latency draw (LogNormal.draw, inline)."""
        sigma = self._sigma
        return self._median * math.exp(sigma * self._rng.gauss(0.0, 1.0)) if sigma else self._median

    def _decide(self, t: float, stream: bool) -> Decision:
        if self.instant:
            return _OK
        if self._outages:
            outage = self.outage_at(t)
            if outage is not None:
                if outage == "refused":
                    return _REFUSED
                if outage == "silent":
                    return _SILENT
                return Decision(STATUS, self._delay(), 503, label="outage_503")
        limit = self._limit
        if limit is not None:
            window = self._window
            while window and window[0] <= t - LIMIT_WINDOW_S:
                window.popleft()
            if len(window) >= limit:
                wait = max(LIMIT_RETRY_AFTER_MIN_S, math.ceil(window[0] + LIMIT_WINDOW_S - t))
                return Decision(STATUS, self._delay(), 429, retry_after=wait, label="limit_429")
            window.append(t)
        delay = self._delay()
        thresholds = self._thresholds
        if thresholds:
            draw = self._rng.random()
            if draw < thresholds[-1]:
                status = self._statuses[bisect.bisect_right(thresholds, draw)]
                return Decision(STATUS, delay, status, retry_after=1 if status == 429 else None,
                                label=_ERROR_LABELS[status])
        if stream and self._stall and self._rng.random() < self._stall:
            return Decision(ANSWER, delay, stalled=True, label="stall")
        return Decision(ANSWER, delay) if delay else _OK
