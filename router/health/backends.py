"""Where limit and health state lives: the seam between `Ledger` and a backend.

`MemoryBackend` keeps everything in this process. `redis_backend.RedisBackend`
shares quotas and health (ejections, throttles) with every replica through Redis.
`Ledger` asks the backend for quotas and tells it about ejections and
throttles; the backend calls back with what other replicas learned.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from router.health.quota import MemoryQuota, Quota, QuotaSpec

# What other replicas reported: (field, seconds left), field = "eject:<target>" | "throttle:<provider>"
# | "recovered:<provider>".
HealthReport = Sequence[tuple[str, float]]
ApplyHealth = Callable[[HealthReport], None]

EJECT = "eject:"
THROTTLE = "throttle:"
RECOVERED = "recovered:"
# How long a probe's "it is back" stays visible to the fleet: a few health syncs.
RECOVERED_TTL_S = 5.0


class StateBackend(Protocol):
    name: str

    def quota(self, key: str, spec: QuotaSpec) -> Quota: ...
    def publish(self, field: str, seconds: float) -> None: ...
    def clear(self, field: str) -> None: ...  # delete a published field (an ejection that is over)
    async def claim(self, name: str, seconds: float) -> bool: ...  # one replica per period: True for it
    async def start(self, apply: ApplyHealth) -> None: ...
    async def aclose(self) -> None: ...


class MemoryBackend:
    """Per-process state. `share` < 1 enforces that fraction of every limit (one of N workers)."""

    name = "memory"
    __slots__ = ("share",)

    def __init__(self, share: float = 1.0) -> None:
        self.share = share

    def quota(self, key: str, spec: QuotaSpec) -> Quota:
        return MemoryQuota(spec, self.share)

    def publish(self, field: str, seconds: float) -> None:
        pass  # nobody else to tell

    def clear(self, field: str) -> None:
        pass

    async def claim(self, name: str, seconds: float) -> bool:
        return True  # the only replica

    async def start(self, apply: ApplyHealth) -> None:
        pass

    async def aclose(self) -> None:
        pass
