"""Full-jitter exponential backoff (AWS architecture blog): spreads retries so they do not synchronise."""

from __future__ import annotations

import random


def full_jitter(failures: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Delay before the next attempt on the same target after `failures` failures there (>= 1).

    Uniform in [0, min(cap, base * 2**(failures-1))]. Bounded, never negative.
    """
    if failures < 1:
        return 0.0
    ceiling = min(cap_s, base_s * (2.0 ** min(failures - 1, 62)))
    return rng.uniform(0.0, ceiling)
