"""A quota: the request bucket and the token bucket of one client or provider, taken together.

The engine and the router see only this surface, so where the buckets live (this
process, or Redis for a fleet) is the state backend's business:

- `wait_time(tokens)`: what this process knows now, without I/O (the planner's view);
- `take(tokens, max_wait)`: one admission decision, both buckets or neither;
- `adjust_tokens(delta)`: return an unused reservation (< 0) or charge usage beyond it (> 0).

`MemoryQuota` is the in-process implementation; `share` < 1 enforces a fraction of
each limit (one worker of several, or a replica that lost its shared backend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from router.health.bucket import Bucket

REQUESTS = "requests"
TOKENS = "tokens"
UNAVAILABLE = "unavailable"  # the shared state is unreachable and `state.on_error` is `deny`


@dataclass(frozen=True, slots=True)
class Rate:
    """A bucket's size and refill speed."""

    capacity: float
    per_second: float

    def share(self, fraction: float) -> Rate:
        # A bucket smaller than one request could never admit anything.
        return Rate(max(1.0, self.capacity * fraction), self.per_second * fraction)


@dataclass(frozen=True, slots=True)
class QuotaSpec:
    requests: Rate | None
    tokens: Rate | None


class Quota(Protocol):
    spec: QuotaSpec
    token_capacity: float | None  # the most tokens one request can reserve

    def wait_time(self, tokens: float) -> float: ...
    async def take(self, tokens: float, max_wait: float) -> tuple[float, str]: ...
    def adjust_tokens(self, delta: float) -> None: ...


class MemoryQuota:
    """Both buckets in this process (aiolimiter through `limits.Bucket`)."""

    __slots__ = ("requests", "spec", "token_capacity", "tokens")

    def __init__(self, spec: QuotaSpec, share: float = 1.0) -> None:
        self.spec = spec
        self.requests = _bucket(spec.requests, share)
        self.tokens = _bucket(spec.tokens, share)
        self.token_capacity = self.tokens.capacity if self.tokens is not None else None

    def wait_time(self, tokens: float) -> float:
        wait = self.requests.wait_time(1) if self.requests is not None else 0.0
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_time(tokens))
        return wait

    def try_take(self, tokens: float) -> tuple[float, str]:
        if self.requests is not None:
            wait = self.requests.try_take(1)
            if wait > 0:
                return wait, REQUESTS
        if self.tokens is not None:
            wait = self.tokens.try_take(tokens)
            if wait > 0:
                if self.requests is not None:
                    self.requests.give_back(1)
                return wait, TOKENS
        return 0.0, ""

    async def take(self, tokens: float, max_wait: float) -> tuple[float, str]:
        """Returns (0.0, "") when admitted, else (seconds still needed, which bucket refused)."""
        if max_wait <= 0:
            return self.try_take(tokens)
        if self.requests is not None:
            wait = await self.requests.take_within(1, max_wait)
            if wait > 0:
                return wait, REQUESTS
        if self.tokens is not None:
            wait = await self.tokens.take_within(tokens, max_wait)
            if wait > 0:
                if self.requests is not None:
                    self.requests.give_back(1)
                return wait, TOKENS
        return 0.0, ""

    def adjust_tokens(self, delta: float) -> None:
        if self.tokens is None:
            return
        if delta < 0:
            self.tokens.give_back(-delta)
        else:
            self.tokens.charge(delta)


def _bucket(rate: Rate | None, share: float) -> Bucket | None:
    if rate is None:
        return None
    if share < 1.0:
        rate = rate.share(share)
    return Bucket(rate.capacity, rate.per_second)

