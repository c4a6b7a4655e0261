"""The log-normal fitted to p50 and p99: it gives the two figures back, exactly and by sampling."""

from __future__ import annotations

import math
import random

import pytest

from router.sim.latency import Z99, LogNormal


@pytest.mark.parametrize(("p50", "p99"), [(0.8, 3.0), (0.02, 0.1), (1.0, 1.0), (5.0, 60.0)])
def test_the_fit_gives_back_its_quantiles(p50: float, p99: float) -> None:
    fitted = LogNormal.fit(p50, p99)
    assert fitted.quantile(0.5) == pytest.approx(p50)
    assert fitted.quantile(0.99) == pytest.approx(p99)
    assert fitted.sigma == pytest.approx(math.log(p99 / p50) / Z99)


def test_draws_have_the_fitted_quantiles() -> None:
    fitted, rng = LogNormal.fit(0.8, 3.0), random.Random(7)
    draws = sorted(fitted.draw(rng) for _ in range(200_000))
    assert draws[len(draws) // 2] == pytest.approx(0.8, rel=0.01)
    assert draws[int(0.99 * len(draws))] == pytest.approx(3.0, rel=0.03)
    assert min(draws) > 0


def test_equal_quantiles_and_zero_are_constant() -> None:
    rng = random.Random(1)
    assert {LogNormal.fit(0.5, 0.5).draw(rng) for _ in range(100)} == {0.5}
    assert {LogNormal.fit(0.0, 0.0).draw(rng) for _ in range(100)} == {0.0}


def test_draws_are_reproducible_from_the_seed() -> None:
    fitted = LogNormal.fit(0.8, 3.0)
    first, second = random.Random(42), random.Random(42)
    assert [fitted.draw(first) for _ in range(50)] == [fitted.draw(second) for _ in range(50)]


@pytest.mark.parametrize(("p50", "p99"), [(-1.0, 1.0), (2.0, 1.0), (0.0, 1.0)])
def test_impossible_fits_are_refused(p50: float, p99: float) -> None:
    with pytest.raises(ValueError):
        LogNormal.fit(p50, p99)
