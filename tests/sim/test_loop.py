"""The virtual-time loop keeps asyncio's contract: timers in time order (ties in the order they were set),
cancelled ones never run, ready callbacks in order, exceptions to the handler; and time jumps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from router.sim.loop import LoopClock, SimulationStalled, VirtualTimeLoop, call_at, run_virtual, wake_at


def test_time_starts_at_zero_and_jumps_to_the_next_timer() -> None:
    async def main() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await asyncio.sleep(3600)
        return began, loop.time()

    assert run_virtual(main) == (0.0, 3600.0)


def test_timers_run_in_time_order_and_ties_in_the_order_they_were_set() -> None:
    ran: list[tuple[str, float]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for name, when in (("c", 2.0), ("a", 1.0), ("b1", 1.5), ("b2", 1.5), ("b3", 1.5)):
            loop.call_at(when, lambda name=name: ran.append((name, loop.time())))
        loop.call_later(0.5, lambda: ran.append(("later", loop.time())))
        call_at(loop, 1.5, lambda: ran.append(("bare", loop.time())))
        await asyncio.sleep(3)

    run_virtual(main)
    assert ran == [("later", 0.5), ("a", 1.0), ("b1", 1.5), ("b2", 1.5), ("b3", 1.5), ("bare", 1.5), ("c", 2.0)]


def test_cancelled_timers_never_run_and_are_purged() -> None:
    ran: list[int] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        handles = [loop.call_later(10 + i, ran.append, i) for i in range(3000)]
        for handle in handles[1:]:
            handle.cancel()
        handles[1].cancel()  # twice: counted once
        await asyncio.sleep(0)
        await asyncio.sleep(1)  # an iteration with more than half of the heap cancelled purges it
        remaining = len(loop._timers)  # type: ignore[attr-defined]
        await asyncio.sleep(5000)
        return remaining

    assert run_virtual(main) < 10
    assert ran == [0]


def test_ready_callbacks_run_in_order_and_an_exception_goes_to_the_handler() -> None:
    order: list[str] = []
    reported: list[dict[str, Any]] = []

    def boom() -> None:
        raise ValueError("boom")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, context: reported.append(context))
        loop.call_soon(order.append, "first")
        loop.call_soon(boom)
        handle = loop.call_soon(order.append, "cancelled")
        loop.call_soon(order.append, "second")
        handle.cancel()
        await asyncio.sleep(0)
        await asyncio.sleep(0)

    run_virtual(main)
    assert order == ["first", "second"]
    assert len(reported) == 1 and isinstance(reported[0]["exception"], ValueError)


def test_asyncio_timeouts_and_wake_at_work_on_virtual_time() -> None:
    async def main() -> tuple[float, float, bool]:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(30):
                await loop.create_future()  # a provider that never answers: 30 s, at once
        after_timeout = loop.time()
        await wake_at(loop, loop.time() + 2.5)
        woken = loop.time()
        future = wake_at(loop, loop.time() + 1)
        future.cancel()  # a cancelled waiter: its entry does nothing when due
        await asyncio.sleep(2)
        return after_timeout, woken, future.cancelled()

    assert run_virtual(main) == (30.0, 32.5, True)


def test_wake_at_works_on_an_ordinary_loop_too() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        await wake_at(loop, began + 0.01)
        return loop.time() - began

    assert asyncio.run(main()) >= 0.01


def test_everyone_waiting_with_no_timer_is_a_stall_not_a_hang() -> None:
    async def main() -> None:
        await asyncio.get_running_loop().create_future()

    with pytest.raises(SimulationStalled):
        run_virtual(main)


def test_the_loop_clock_reads_virtual_time_bound_or_not() -> None:
    async def main() -> tuple[float, float, float, float]:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(12.5)
        bound, looked_up = LoopClock(loop), LoopClock()
        return bound.monotonic(), looked_up.monotonic(), bound.wall() - looked_up.wall(), loop.time()

    monotonic, looked_up, wall_difference, now = run_virtual(main)
    assert monotonic == looked_up == now == 12.5 and wall_difference == 0.0


def test_a_closed_loop_refuses_new_callbacks() -> None:
    loop = VirtualTimeLoop()
    loop.close()
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_soon(print)
    with pytest.raises(RuntimeError, match="closed"):
        loop.call_later(1, print)
