"""Retry budget (Finagle/Envoy style): retries may not exceed a share of recent requests plus a floor.

Counts live in one-second buckets over `window_s`, so recording and checking are
O(1) and the memory is fixed. An outage therefore adds at most
`percent`% + `min_per_second` extra upstream load instead of multiplying it.
"""

from __future__ import annotations

import math

from router.policy.model import RetryBudget


class RetryBudgetTracker:
    __slots__ = ("_requests", "_retries", "_slots", "_stamp", "policy")

    def __init__(self, policy: RetryBudget) -> None:
        self.policy = policy
        self._slots = max(1, math.ceil(policy.window_s))
        self._requests = [0] * self._slots
        self._retries = [0] * self._slots
        self._stamp = [-1] * self._slots  # which absolute second each slot holds

    def _slot(self, now: float) -> int:
        second = int(now)
        index = second % self._slots
        if self._stamp[index] != second:
            self._stamp[index] = second
            self._requests[index] = 0
            self._retries[index] = 0
        return index

    def totals(self, now: float) -> tuple[int, int]:
        """(requests, retries spent) over the window."""
        oldest = int(now) - self._slots + 1
        requests = retries = 0
        for i in range(self._slots):
            if self._stamp[i] >= oldest:
                requests += self._requests[i]
                retries += self._retries[i]
        return requests, retries

    def record_request(self, now: float) -> None:
        self._requests[self._slot(now)] += 1

    def try_spend(self, now: float) -> bool:
        """Take one retry from the budget; False means the budget is exhausted."""
        requests, retries = self.totals(now)
        allowance = requests * self.policy.percent / 100.0 + self.policy.min_per_second * self.policy.window_s
        if retries + 1 > allowance:
            return False
        self._retries[self._slot(now)] += 1
        return True
