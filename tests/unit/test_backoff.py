"""Full-jitter backoff: uniform in [0, min(cap, base * 2**(failures-1))], seeded and bounded."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.engine.backoff import full_jitter


def sample(failures: int, base_s: float = 0.25, cap_s: float = 8.0, n: int = 2000,
           seed: int = 7) -> list[float]:
    rng = random.Random(seed)
    return [full_jitter(failures, base_s, cap_s, rng) for _ in range(n)]


@pytest.mark.parametrize("failures", [1, 2, 3, 4, 5])
def test_delay_stays_within_the_exponential_ceiling(failures: int) -> None:
    ceiling = 0.25 * 2 ** (failures - 1)
    delays = sample(failures)
    assert all(0.0 <= d <= ceiling for d in delays)
    # Full jitter spreads over the whole range, not just its upper part.
    assert min(delays) < 0.1 * ceiling
    assert max(delays) > 0.9 * ceiling


def test_first_failure_waits_at_most_the_base_interval() -> None:
    assert max(sample(1, base_s=0.5)) <= 0.5


def test_ceiling_doubles_with_each_failure() -> None:
    means = [sum(sample(f)) / 2000 for f in (1, 2, 3, 4)]
    for smaller, larger in itertools.pairwise(means):
        assert larger == pytest.approx(2 * smaller, rel=0.15)


def test_delay_is_capped_however_many_failures() -> None:
    for failures in (6, 10, 63, 64, 1000, 10**9):
        delays = sample(failures, n=200)
        assert all(0.0 <= d <= 8.0 for d in delays)
        assert max(delays) > 7.0  # the cap is reached, not some smaller value


@pytest.mark.parametrize("failures", [0, -1, -100])
def test_no_failures_means_no_delay(failures: int) -> None:
    rng = random.Random(1)
    state = rng.getstate()
    assert full_jitter(failures, 0.25, 8.0, rng) == 0.0
    assert rng.getstate() == state  # no randomness consumed


def test_same_seed_gives_the_same_delays() -> None:
    assert sample(3, n=50, seed=42) == sample(3, n=50, seed=42)
    assert sample(3, n=50, seed=42) != sample(3, n=50, seed=43)


def test_delay_is_drawn_from_the_injected_random_source() -> None:
    expected = random.Random(5).uniform(0.0, 1.0)
    assert full_jitter(3, 0.25, 8.0, random.Random(5)) == expected


@given(failures=st.integers(min_value=-5, max_value=10**6),
       base=st.floats(min_value=0.0, max_value=100.0),
       cap=st.floats(min_value=0.0, max_value=1000.0),
       seed=st.integers(min_value=0, max_value=2**32))
def test_delay_is_never_negative_nor_above_cap(failures: int, base: float, cap: float, seed: int) -> None:
    delay = full_jitter(failures, base, cap, random.Random(seed))
    assert 0.0 <= delay <= cap
    if failures >= 1:
        assert delay <= base * 2.0 ** min(failures - 1, 62)
