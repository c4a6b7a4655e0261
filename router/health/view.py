"""The health layer's answer to "can this target take a request now?", as the planner reads it.

The planner (engine/planner.py) decides from this view only; the ledger (ledger.py)
implements it from breakers, throttles, quotas and in-flight counts.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from router.policy.model import Target


class Status(enum.Enum):
    READY = "ready"
    OPEN = "open"  # breaker open (or its probe is out)
    THROTTLED = "throttled"  # provider said 429 / Retry-After
    QUOTA = "quota"  # our quota bucket at the provider is empty
    DRAINED = "drained"  # an operator drained the provider (admin API): no new requests until restored


@dataclass(frozen=True, slots=True)
class Availability:
    status: Status
    free_at: float = 0.0  # monotonic time it becomes usable (THROTTLED/QUOTA)
    last_failure: float = float("-inf")
    probed: bool = False  # OPEN, and only the health prober may let it back in (never forced)


READY = Availability(Status.READY)
DRAINED = Availability(Status.DRAINED)


class TargetView(Protocol):
    def availability(self, target: Target, now: float, tokens: int) -> Availability: ...
    def inflight(self, target: Target) -> int: ...
    # `strategy: adaptive`: the moving-average latency (None: no sample yet) and the recent failure count.
    def latency(self, target: Target, *, stream: bool) -> float | None: ...
    def recent_failures(self, target: Target, now: float, half_life_s: float) -> float: ...
