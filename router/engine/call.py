"""What one admitted request carries through the engine: its policy snapshot, deadline and progress."""

from __future__ import annotations

from dataclasses import dataclass, field

from router.engine.outcome import RequestRecord
from router.engine.planner import Progress
from router.health.backends import StateBackend
from router.health.ledger import Ledger
from router.policy.model import Policy, Route, Target
from router.request import ChatRequest

Tiers = tuple[tuple[Target, ...], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs, fixed for its whole life (reload swaps the snapshot)."""

    policy: Policy
    ledger: Ledger
    tiers: dict[str, Tiers]

    @classmethod
    def build(cls, policy: Policy, previous: Snapshot | None = None,
              backend: StateBackend | None = None) -> Snapshot:
        ledger = Ledger(policy, previous.ledger if previous else None, backend)
        tiers: dict[str, Tiers] = {}
        for name, route in policy.routes.items():
            levels = sorted({t.priority for t in route.targets})
            tiers[name] = tuple(tuple(t for t in route.targets if t.priority == p) for p in levels)
        return cls(policy=policy, ledger=ledger, tiers=tiers)


@dataclass(slots=True)
class Call:
    """One client request in flight: its snapshot, deadline, record and progress."""

    snapshot: Snapshot
    route: Route
    tiers: Tiers  # a stream's continuation narrows them to the targets that accept a prefill
    request: ChatRequest
    record: RequestRecord
    deadline: float
    progress: Progress = field(default_factory=Progress)
    tokens_reserved: int = 0  # taken from the client's token bucket at admission, until settled

    @property
    def client(self) -> str:
        return self.record.client

    @property
    def started(self) -> float:
        return self.record.started
