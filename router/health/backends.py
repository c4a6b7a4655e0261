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

# What other replicas reported: (field, seconds left), field = "eject:<target>" | "throttle:<provider>".
HealthReport = Sequence[tuple[str, float]]
ApplyHealth = Callable[[HealthReport], None]

EJECT = "eject:"
THROTTLE = "throttle:"


class StateBackend(Protocol):
    name: str

    def quota(self, key: str, spec: QuotaSpec) -> Quota: ...
    def publish(self, field: str, seconds: float) -> None: ...
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

    async def start(self, apply: ApplyHealth) -> None:
        pass

    async def aclose(self) -> None:
        pass
