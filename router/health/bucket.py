"""Token buckets for client limits and provider quotas, built on aiolimiter.

aiolimiter is a leaky bucket whose `max_rate` is also the burst. It has no public
way to say *how long* until capacity frees up, to return unused capacity, or to
record usage beyond the reservation, all of which a gateway needs (Retry-After,
and reconciling a token reservation with the real `usage`). This adapter is the
one place that reads and adjusts the bucket level (`_level`, after `has_capacity`
has leaked it to now); pyproject pins aiolimiter to 1.x for that reason.
"""

from __future__ import annotations

import asyncio

from aiolimiter import AsyncLimiter


class Bucket:
    """Capacity `capacity`, refilled at `per_second`. Amounts above capacity are clamped."""

    __slots__ = ("_limiter", "capacity", "per_second")

    def __init__(self, capacity: float, per_second: float) -> None:
        if capacity <= 0 or per_second <= 0:
            raise ValueError("capacity and per_second must be positive")
        self.capacity = float(capacity)
        self.per_second = float(per_second)
        # Created lazily: aiolimiter binds to the running loop on first use.
        self._limiter = AsyncLimiter(self.capacity, self.capacity / self.per_second)

    def _clamp(self, amount: float) -> float:
        return min(max(amount, 0.0), self.capacity)

    def wait_time(self, amount: float = 1.0) -> float:
        """Seconds until `amount` fits (0.0 = now). Never negative, never NaN."""
        amount = self._clamp(amount)
        if self._limiter.has_capacity(amount):
            return 0.0
        excess = self._limiter._level + amount - self.capacity
        return max(excess / self.per_second, 1e-3)

    def try_take(self, amount: float = 1.0) -> float:
        """Take `amount` now if it fits and return 0.0; otherwise take nothing and return the wait."""
        amount = self._clamp(amount)
        if self._limiter.has_capacity(amount):
            self._limiter._level += amount
            return 0.0
        return self.wait_time(amount)

    async def take_within(self, amount: float, max_wait_s: float) -> float:
        """Wait up to `max_wait_s` for capacity. Returns 0.0 on success, else the wait still needed."""
        amount = self._clamp(amount)
        wait = self.try_take(amount)
        if wait == 0.0 or wait > max_wait_s:
            return wait
        try:
            async with asyncio.timeout(max_wait_s):
                await self._limiter.acquire(amount)
        except TimeoutError:
            return self.wait_time(amount)
        return 0.0

    def available(self) -> float:
        """What could be taken now (the admin state shows it; a debt shows as 0)."""
        self._limiter.has_capacity(0)  # leak to now
        return max(0.0, self.capacity - self._limiter._level)

    def give_back(self, amount: float) -> None:
        """Return unused reservation (the real usage was smaller, or the request never ran)."""
        if amount > 0:
            self._limiter.has_capacity(0)  # leak to now before adjusting
            self._limiter._level = max(0.0, self._limiter._level - amount)

    def charge(self, amount: float) -> None:
        """Record usage beyond the reservation. The level may exceed capacity: that is a debt
        that later requests wait out, so real usage is never forgiven."""
        if amount > 0:
            self._limiter.has_capacity(0)
            self._limiter._level += amount

    def reconcile(self, reserved: float, actual: float) -> None:
        if actual < reserved:
            self.give_back(reserved - actual)
        elif actual > reserved:
            self.charge(actual - reserved)
