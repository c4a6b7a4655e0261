"""Token buckets over aiolimiter: waits, clamping, give-back, debt and reconciliation.

aiolimiter measures time with the running loop's clock, so these tests run inside a
loop and either check arithmetic on a bucket that leaks slowly (1 unit per 1000 s,
so the few milliseconds a test takes do not matter) or use waits of tens of ms.
"""

from __future__ import annotations

import asyncio

import pytest

from router.health.bucket import Bucket

SLOW = 1e-3  # units per second: effectively no refill during a test
TOL = 1e-2


def slow_bucket(capacity: float = 10.0) -> Bucket:
    return Bucket(capacity, SLOW)


@pytest.mark.parametrize(("capacity", "per_second"), [(0, 1), (1, 0), (-1, 1), (1, -2)])
def test_non_positive_capacity_or_rate_is_refused(capacity: float, per_second: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        Bucket(capacity, per_second)


async def test_full_bucket_has_no_wait() -> None:
    bucket = slow_bucket()
    assert bucket.wait_time(1) == 0.0
    assert bucket.wait_time(10) == 0.0


async def test_try_take_takes_when_it_fits() -> None:
    bucket = slow_bucket()
    assert bucket.try_take(4) == 0.0
    assert bucket.try_take(6) == 0.0
    assert bucket.wait_time(1) > 0


async def test_try_take_that_does_not_fit_takes_nothing_and_returns_the_wait() -> None:
    bucket = Bucket(10, 2.0)
    assert bucket.try_take(8) == 0.0
    wait = bucket.try_take(5)  # 3 over capacity, refilled at 2/s
    assert wait == pytest.approx(1.5, abs=TOL)
    assert bucket.try_take(2) == 0.0  # the refused 5 were not taken


async def test_wait_time_is_excess_over_the_refill_rate() -> None:
    bucket = Bucket(100, 10.0)
    bucket.try_take(100)
    assert bucket.wait_time(1) == pytest.approx(0.1, abs=TOL)
    assert bucket.wait_time(30) == pytest.approx(3.0, abs=TOL)


async def test_amount_above_capacity_is_clamped_not_an_error() -> None:
    bucket = slow_bucket(10)
    assert bucket.wait_time(1000) == 0.0
    assert bucket.try_take(1000) == 0.0  # takes the whole bucket instead of raising
    assert bucket.wait_time(1) == pytest.approx(1 / SLOW, rel=TOL)


async def test_negative_amount_is_clamped_to_zero_and_frees_nothing() -> None:
    bucket = slow_bucket(10)
    bucket.try_take(10)
    assert bucket.try_take(-5) == 0.0  # "nothing" always fits ...
    assert bucket.wait_time(1) == pytest.approx(1 / SLOW, rel=TOL)  # ... and gives nothing back


async def test_give_back_returns_capacity() -> None:
    bucket = slow_bucket(10)
    bucket.try_take(10)
    bucket.give_back(4)
    assert bucket.try_take(4) == 0.0
    assert bucket.try_take(1) > 0


async def test_give_back_never_makes_the_level_negative() -> None:
    bucket = slow_bucket(10)
    bucket.try_take(2)
    bucket.give_back(100)
    assert bucket.try_take(10) == 0.0
    assert bucket.try_take(1) > 0  # no hidden extra capacity


async def test_give_back_of_nothing_or_negative_changes_nothing() -> None:
    bucket = slow_bucket(10)
    bucket.try_take(10)
    bucket.give_back(0)
    bucket.give_back(-3)
    assert bucket.try_take(1) > 0


async def test_charge_beyond_capacity_is_a_debt_to_wait_out() -> None:
    bucket = Bucket(10, 2.0)
    bucket.try_take(10)
    bucket.charge(6)  # real usage exceeded the reservation
    assert bucket.wait_time(1) == pytest.approx((16 + 1 - 10) / 2.0, abs=TOL)
    assert bucket.try_take(1) > 3.0


async def test_charge_of_nothing_or_negative_changes_nothing() -> None:
    bucket = slow_bucket(10)
    bucket.charge(0)
    bucket.charge(-5)
    assert bucket.try_take(10) == 0.0


async def test_reconcile_gives_back_unused_reservation() -> None:
    bucket = slow_bucket(100)
    bucket.try_take(100)
    bucket.reconcile(reserved=100, actual=30)
    assert bucket.try_take(70) == 0.0
    assert bucket.try_take(1) > 0


async def test_reconcile_charges_usage_beyond_the_reservation() -> None:
    bucket = Bucket(100, 10.0)
    bucket.try_take(50)
    bucket.reconcile(reserved=50, actual=120)
    assert bucket.wait_time(1) == pytest.approx((120 + 1 - 100) / 10.0, abs=TOL)


async def test_reconcile_with_exact_usage_changes_nothing() -> None:
    bucket = slow_bucket(10)
    bucket.try_take(5)
    bucket.reconcile(reserved=5, actual=5)
    assert bucket.try_take(5) == 0.0
    assert bucket.try_take(1) > 0


async def test_take_within_succeeds_at_once_when_it_fits() -> None:
    bucket = slow_bucket(10)
    assert await bucket.take_within(3, 0.0) == 0.0
    assert bucket.try_take(7) == 0.0
    assert bucket.try_take(1) > 0


async def test_take_within_waits_for_refill_within_the_limit() -> None:
    bucket = Bucket(1, 50.0)  # refills one unit in 20 ms
    bucket.try_take(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await bucket.take_within(1, 1.0) == 0.0
    assert 0.01 <= loop.time() - started < 0.5
    assert bucket.try_take(1) > 0  # the unit was taken


async def test_take_within_refuses_at_once_when_the_wait_is_too_long() -> None:
    bucket = slow_bucket(1)
    bucket.try_take(1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    wait = await bucket.take_within(1, 0.5)
    assert wait == pytest.approx(1 / SLOW, rel=TOL)
    assert loop.time() - started < 0.1  # did not sit out the 0.5 s


async def test_take_within_times_out_when_others_take_the_capacity_first() -> None:
    bucket = Bucket(1, 10.0)  # one unit per 100 ms
    bucket.try_take(1)
    # Both expect to wait ~100 ms (< 150 ms); only one unit frees up in time.
    first, second = await asyncio.gather(bucket.take_within(1, 0.15), bucket.take_within(1, 0.15))
    assert sorted([first, second])[0] == 0.0
    assert sorted([first, second])[1] > 0.0


async def test_take_within_clamps_amounts_above_capacity() -> None:
    bucket = Bucket(2, 100.0)
    assert await bucket.take_within(50, 0.5) == 0.0
    assert await bucket.take_within(50, 0.5) == 0.0  # waits ~20 ms for the whole bucket, no ValueError
