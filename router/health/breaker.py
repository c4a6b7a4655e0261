"""Per-target circuit breaker: a small state machine with an injected clock.

closed --(N consecutive failures)--> open --(ejection elapsed)--> half-open
half-open lets exactly one probe through: success closes, failure re-opens with
a longer ejection. Ejection grows exponentially on repeated ejection but is
capped by `max_ejection_s`, so a provider that recovers is back in service
within that cap. A 429 is not a failure (the provider is healthy, just busy).

A `probed` breaker (its provider has a `health_probe`) never lets a client request through as the
half-open probe: the health prober (health/prober.py) probes out of band and closes it with
`recovered()`, or keeps it open with `probe_failed()`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from router.policy.model import BreakerPolicy


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Permit:
    """Proof that an attempt was admitted; a probe permit must be settled exactly once."""

    probe: bool


_NORMAL = Permit(probe=False)
_PROBE = Permit(probe=True)


class Breaker:
    __slots__ = ("_consecutive", "_ejections", "_open_until", "_probe_out", "last_failure", "policy", "probed")

    def __init__(self, policy: BreakerPolicy, *, probed: bool = False) -> None:
        self.policy = policy
        self.probed = probed
        self._consecutive = 0
        self._ejections = 0
        self._open_until: float | None = None
        self._probe_out = False
        self.last_failure = float("-inf")

    def state(self, now: float) -> BreakerState:
        if self._open_until is None:
            return BreakerState.CLOSED
        if now < self._open_until or self._probe_out or self.probed:
            return BreakerState.OPEN
        return BreakerState.HALF_OPEN

    def available(self, now: float) -> bool:
        """True when an attempt would be admitted right now (closed, or a probe is free)."""
        return self._open_until is None or (now >= self._open_until and not self._probe_out and not self.probed)

    @property
    def open_until(self) -> float | None:
        return self._open_until

    def acquire(self, now: float) -> Permit | None:
        if self._open_until is None:
            return _NORMAL
        if now >= self._open_until and not self._probe_out and not self.probed:
            self._probe_out = True
            return _PROBE
        return None

    def force_acquire(self) -> Permit:
        """Admit despite an open breaker (a route must never have every target ejected)."""
        return _NORMAL

    def on_success(self, permit: Permit) -> bool:
        """Returns True when this success closed an open breaker."""
        was_open = self._open_until is not None
        self._consecutive = 0
        self._ejections = 0
        self._open_until = None
        self._probe_out = False
        return was_open

    def on_failure(self, permit: Permit, now: float) -> bool:
        """Returns True when this failure opened (or re-opened) the breaker."""
        self.last_failure = now
        if permit.probe:
            self._probe_out = False
            self._eject(now)
            return True
        if self._open_until is not None:
            return False  # an attempt admitted before the breaker opened; already ejected
        self._consecutive += 1
        if self._consecutive >= self.policy.consecutive_failures:
            self._eject(now)
            return True
        return False

    def on_neutral(self, permit: Permit) -> None:
        """The attempt said nothing about health (429, a bad request, a cancellation)."""
        if permit.probe:
            self._probe_out = False

    def eject_for_max(self, now: float) -> None:
        """Our credentials were refused: keep the target out for the longest ejection."""
        self.last_failure = now
        self._probe_out = False
        self._ejections = max(self._ejections, 1)
        self._open_until = now + self.policy.max_ejection_s

    # -- the out-of-band prober (probed breakers) ------------------------------------------------
    def recovered(self) -> bool:
        """A health probe succeeded: close. Returns True when this closed an open breaker."""
        return self.on_success(_NORMAL)

    def probe_failed(self, now: float) -> None:
        """A health probe failed: stay open (an ejection that elapsed starts another)."""
        self.last_failure = now
        if self._open_until is not None and now >= self._open_until:
            self._eject(now)

    def adopt_ejection(self, until: float, now: float) -> bool:
        """Another replica ejected this target until `until`. Extends an ejection, never shortens
        one, and leaves the ejection count alone (growth follows this replica's own probes).
        Returns True when this took an available target out of service."""
        was_available = self.available(now)
        if self._open_until is None or until > self._open_until:
            self._open_until = until
            # When this replica learnt of the failure: a probe's recovery from before it must not undo it.
            self.last_failure = max(self.last_failure, now)
        return was_available and not self.available(now)

    def _eject(self, now: float) -> None:
        self._ejections += 1
        self._consecutive = 0
        growth = 2.0 ** min(self._ejections - 1, 30)
        self._open_until = now + min(self.policy.max_ejection_s, self.policy.base_ejection_s * growth)
