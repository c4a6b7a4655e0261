"""Provider latency as a log-normal distribution fitted to two figures people actually know: p50 and p99.

Response times of LLM providers are skewed to the right (most answers near the median, a long tail
of slow ones); a log-normal is the usual model for that, and two quantiles fix its two parameters:
the median is e^mu, and p99 = median * e^(sigma * z99) with z99 the 99th percentile of the standard
normal (2.326...). So sigma = ln(p99 / p50) / z99.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from statistics import NormalDist

_STANDARD = NormalDist()
Z99 = _STANDARD.inv_cdf(0.99)


@dataclass(frozen=True, slots=True)
class LogNormal:
    """`median * e^(sigma * N(0, 1))`; a median of 0 is the instant provider (every draw is 0)."""

    median: float
    sigma: float

    @classmethod
    def fit(cls, p50: float, p99: float) -> LogNormal:
        if p50 < 0 or p99 < p50:
            raise ValueError(f"need 0 <= p50 <= p99, got p50={p50}, p99={p99}")
        if p50 == 0:
            if p99 != 0:
                raise ValueError("a log-normal with a median of 0 has every quantile at 0")
            return cls(0.0, 0.0)
        return cls(p50, math.log(p99 / p50) / Z99)

    def draw(self, rng: random.Random) -> float:
        if self.sigma == 0.0:
            return self.median
        return self.median * math.exp(self.sigma * rng.gauss(0.0, 1.0))

    def quantile(self, q: float) -> float:
        """The q-quantile (0 < q < 1) of the distribution: `quantile(0.99)` gives back the fitted p99."""
        return self.median * math.exp(self.sigma * _STANDARD.inv_cdf(q))
