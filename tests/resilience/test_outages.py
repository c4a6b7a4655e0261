"""Outage arithmetic: one provider of three down, then all of them (CI size: seconds, not minutes).

`python -m bench.soak --outage` runs the same scenarios with the full 60-second outage.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.scenarios import OUTAGE_BUDGET, run_all_down, run_one_down

RATE = 200.0


@pytest.mark.slow
async def test_one_of_three_providers_refusing_connections_is_absorbed_after_detection(tmp_path: Path) -> None:
    report = await run_one_down(outage_s=9.0, rate=RATE, workdir=tmp_path)
    print(report.summary())

    assert report.late_starts <= report.requests // 100  # the load generator kept its rate
    assert report.requests >= 0.95 * RATE * 9.0
    assert report.detection_s is not None  # the dead provider's breaker opened during the outage
    assert report.anomalies == 0
    assert report.success_after_detection >= 0.999
    assert report.extra_attempts <= 0.10
    assert report.extra_attempts_metrics <= 0.10


@pytest.mark.slow
async def test_with_every_provider_refusing_connections_clients_get_fast_503s_within_the_retry_budget(
        tmp_path: Path) -> None:
    report = await run_all_down(down_s=14.0, measure_after_s=10.0, rate=RATE, workdir=tmp_path)
    print(report.summary())

    assert report.late_starts <= report.requests // 100
    assert report.requests >= 0.95 * RATE * 4.0  # measured from 10 s into the outage to its end
    assert report.anomalies == 0
    # Upstream load stays within the retry budget: 1 + 5% + 1/s over the request rate, under 1.1.
    assert OUTAGE_BUDGET["percent"] / 100 + OUTAGE_BUDGET["min_per_second"] / RATE < 0.10
    assert report.attempts_per_request <= 1.1
    # Fast 503s with Retry-After: nothing waited for a timeout or a backoff.
    assert set(report.statuses) == {503}, report.statuses
    assert report.with_retry_after == 1.0
    assert report.latency_p99 <= 0.1
    # Flat: no memory growth, and the daemon's CPU does not climb as the outage goes on.
    assert report.rss_growth < 0.10
    # (The issue gives no number for CPU. Between the two halves this VM's noise alone reached +24%; a cost
    # that grew with the outage, or retries escaping the budget, would show as more than +50%.)
    assert report.cpu_halves[1] <= 1.5 * report.cpu_halves[0]
