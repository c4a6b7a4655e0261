"""What the router has seen of one target lately: the inputs of `strategy: adaptive` and of hedging.

Pure state with the time passed in (no clock of its own), so tests drive it without sleeping.

- Latency: a peak-sensitive moving average (Finagle's and Linkerd's "peak EWMA"), one for streams
  (time to first event) and one for JSON (whole answer). A sample above the estimate replaces it at
  once, so a target that slows down looks slow at its first slow answer; lower samples pull the
  estimate down with a half-life in *time*, not in samples, so a burst of fast answers cannot erase
  a slowdown in a fraction of a second.
- Failures: a count that halves every half-life. A failure never records a latency below the
  estimate: a connection refused in a millisecond must not make a target look fast.
- First bytes: the last `_RING` times to first byte (streams: first event), for a hedge delay at a
  quantile of what the target usually takes.
"""

from __future__ import annotations

import math

_RING = 128  # recent first-byte samples kept per kind
MIN_QUANTILE_SAMPLES = 20  # fewer than this: no quantile yet (the hedge uses its fixed delay)
_STREAM, _JSON = 0, 1


class TargetStats:
    __slots__ = ("_first_bytes", "_latency", "_next", "_sorted", "_updated", "failures", "failures_at",
                 "samples")

    def __init__(self) -> None:
        self._latency: list[float | None] = [None, None]  # [streams, JSON], seconds
        self._updated = [-math.inf, -math.inf]
        self.failures = 0.0  # decayed count, as of `failures_at`
        self.failures_at = -math.inf
        self._first_bytes: list[list[float]] = [[], []]
        self._next = [0, 0]
        self._sorted: list[list[float] | None] = [None, None]  # cached sorted copy for quantiles
        self.samples = 0

    # -- recording ---------------------------------------------------------------------------------
    def succeeded(self, stream: bool, latency: float, first_byte: float | None, now: float,
                  half_life_s: float) -> None:
        """One success. Runs on every request: written out flat, without calls."""
        kind = 0 if stream else 1
        estimates = self._latency
        current = estimates[kind]
        if current is None or latency >= current:
            estimates[kind] = latency
        else:
            elapsed = now - self._updated[kind]
            keep = 0.5 ** (elapsed / half_life_s) if elapsed > 0.0 else 1.0
            estimates[kind] = current * keep + latency * (1.0 - keep)
        self._updated[kind] = now
        if first_byte is not None:
            ring = self._first_bytes[kind]
            if len(ring) < _RING:
                ring.append(first_byte)
            else:
                position = self._next[kind]
                ring[position] = first_byte
                self._next[kind] = position + 1 if position + 1 < _RING else 0
            self._sorted[kind] = None
        self.samples += 1

    def failed(self, *, stream: bool, elapsed: float, now: float, half_life_s: float) -> None:
        kind = _STREAM if stream else _JSON
        current = self._latency[kind]
        if current is not None and elapsed > current:
            self._observe(kind, elapsed, now, half_life_s)  # a timeout: the target is at least this slow
        self.failures = self.recent_failures(now, half_life_s) + 1.0
        self.failures_at = now

    def forget(self) -> None:
        """The target came back from an ejection: judge it afresh (a fair trial)."""
        self._latency = [None, None]
        self._updated = [-math.inf, -math.inf]
        self.failures = 0.0
        self.failures_at = -math.inf

    # -- reading -----------------------------------------------------------------------------------
    def latency(self, *, stream: bool) -> float | None:
        """The moving-average latency in seconds, None before the first sample."""
        return self._latency[_STREAM if stream else _JSON]

    def recent_failures(self, now: float, half_life_s: float) -> float:
        if self.failures == 0.0:
            return 0.0
        return self.failures * 0.5 ** (max(0.0, now - self.failures_at) / half_life_s)

    def first_byte_quantile(self, q: float, *, stream: bool) -> float | None:
        """The q-quantile (0 < q <= 1) of recent times to first byte, None with too few samples."""
        kind = _STREAM if stream else _JSON
        ordered = self._sorted[kind]
        if ordered is None:
            samples = self._first_bytes[kind]
            if len(samples) < MIN_QUANTILE_SAMPLES:
                return None
            ordered = self._sorted[kind] = sorted(samples)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    # -- internals ---------------------------------------------------------------------------------
    def _observe(self, kind: int, sample: float, now: float, half_life_s: float) -> None:
        current = self._latency[kind]
        if current is None or sample >= current:
            self._latency[kind] = sample
        else:
            keep = 0.5 ** (max(0.0, now - self._updated[kind]) / half_life_s)
            self._latency[kind] = current * keep + sample * (1.0 - keep)
        self._updated[kind] = now

