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
4. a stream that succeeds stalls with `stall_percent`: two reads, then nothing, ever;
5. one log-normal latency draw: the time to the answer's head. A JSON body and a stream's
   first read come with it; a stream's next reads follow STREAM_GAP_S apart.

A provider of the policy that the profile does not name answers every attempt at once and
never fails (`ProviderModel.instant`), a stream in one read.
"""

from __future__ import annotations

import bisect
import json
import math
import random
from collections import deque
from dataclasses import dataclass

from router.sim.latency import LogNormal
from router.sim.profile import LIMIT_WINDOW_S, ProviderFaults

# A streamed answer: the first read (role and first words) at the latency draw, then three more reads
# this far apart: more words, the last words, then the finish_reason chunk, usage and [DONE].
STREAM_GAP_S = 0.1
STALL_AFTER_READS = 2  # a stalled stream delivers this many reads, then stops for good
LIMIT_RETRY_AFTER_MIN_S = 1

# Decision kinds.
ANSWER = "answer"  # a 2xx: JSON, or a stream
STATUS = "status"  # an error status
REFUSED = "refused"  # connection refused
SILENT = "silent"  # accepted, never answered


@dataclass(frozen=True, slots=True)
class Decision:
    kind: str
    delay_s: float = 0.0  # until the head (a JSON body, a stream's first read), from the attempt
    status: int = 200
    retry_after: int | None = None  # seconds, with a 429
    stalled: bool = False  # a stream that stops after STALL_AFTER_READS reads
    label: str = "ok"  # what happened, for the per-provider counts: ok, stall, error_503, limit_429, outage_...


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
            chunk({"content": " from"}),
            chunk({"content": f" {provider}."}),
            chunk({}, "stop") + chunk(None, usage={"prompt_tokens": 8, "completion_tokens": 4}) + b"data: [DONE]\n\n",
        )
        self.stream_whole = b"".join(self.stream_reads)
        self._errors: dict[int, bytes] = {}

    def error(self, status: int) -> bytes:
        body = self._errors.get(status)
        if body is None:
            kind = "rate_limit_exceeded" if status == 429 else "server_error" if status >= 500 else "invalid_request"
            body = self._errors[status] = json.dumps(
                {"error": {"message": f"simulated {status}", "type": kind, "code": None}}).encode()
        return body


_OK = Decision(ANSWER)
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
        self._latency: LogNormal = faults.latency
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
        """The kind of the outage in progress at `t` (seconds since the start), None if none. `t` must not
        go backwards between calls (it is the time of successive attempts)."""
        outages, index = self._outages, self._outage_index
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
        self.counts[decision.label] = self.counts.get(decision.label, 0) + 1
        return decision

    def _decide(self, t: float, stream: bool) -> Decision:
        if self.instant:
            return _OK
        outage = self.outage_at(t) if self._outages else None
        if outage is not None:
            if outage == "refused":
                return _REFUSED
            if outage == "silent":
                return _SILENT
            return Decision(STATUS, self._latency.draw(self._rng), 503, label="outage_503")
        rng = self._rng
        limit = self._limit
        if limit is not None:
            window = self._window
            while window and window[0] <= t - LIMIT_WINDOW_S:
                window.popleft()
            if len(window) >= limit:
                wait = max(LIMIT_RETRY_AFTER_MIN_S, math.ceil(window[0] + LIMIT_WINDOW_S - t))
                return Decision(STATUS, self._latency.draw(rng), 429, retry_after=wait, label="limit_429")
            window.append(t)
        delay = self._latency.draw(rng)
        if self._thresholds:
            draw = rng.random()
            if draw < self._thresholds[-1]:
                status = self._statuses[bisect.bisect_right(self._thresholds, draw)]
                return Decision(STATUS, delay, status, retry_after=1 if status == 429 else None,
                                label=f"error_{status}")
        if stream and self._stall and rng.random() < self._stall:
            return Decision(ANSWER, delay, stalled=True, label="stall")
        return Decision(ANSWER, delay) if delay else _OK
