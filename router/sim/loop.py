"""Virtual time: an event loop whose clock jumps to the next timer whenever nothing is ready.

Minutes of traffic (thousands of requests in flight, providers that stall, time out, recover) run
through the real `Router` in a fraction of the time, and give the same result on a loaded machine as
on a quiet one: nothing depends on how fast the machine is. A silent provider that makes the router
wait 30 s for a first byte costs one timer, not 30 seconds.

Only code that does no real I/O and starts no threads may run on it: with nothing ready and no timer
set, a real loop would wait for a socket; this one raises `SimulationStalled` instead of hanging.

`call_at` and `_run_once` are replaced: asyncio's `_run_once` polls a selector every iteration
(a system call) and keeps timers in a heap compared in Python. These keep the same contract (due
timers move to the ready queue, ready callbacks run in order, cancelled timers never run) and use
the same private attributes asyncio's own do (`_ready`, `_timer_cancelled_count`, `_stopping`,
`TimerHandle._scheduled` and `_cancelled`), which CPython 3.11-3.13 all keep;
`tests/sim/test_loop.py` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Rebuild the timer heap when more than half of it is cancelled timers (every answered attempt leaves
# its cancelled first-byte timeout behind, due up to `first_byte_s` later) and there are this many.
_MIN_CANCELLED_TO_PURGE = 1000
_WALL_OFFSET = 1_700_000_000.0  # a plausible wall clock for HTTP-dates: virtual second 0 is Nov 2023


class SimulationStalled(RuntimeError):
    """Every task waits, no timer is set: on virtual time nothing can ever happen again."""


class _NoIoSelector(selectors.BaseSelector):
    """Holds the loop's self-pipe registration and is never polled (see `VirtualTimeLoop._run_once`)."""

    def __init__(self) -> None:
        self._keys: dict[int, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fd] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        return self._keys.pop(fd)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        return []

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """`time()` is virtual: it starts at 0 and, when every task waits for a timer, jumps to that timer.

    Timers live in a heap of `(when, sequence, item)` tuples, compared in C, rather than asyncio's heap
    of `TimerHandle`s, which compares them with a Python-level `__lt__` (a dozen calls a push or pop
    with a few thousand timers pending, as in a simulation). `item` is a `TimerHandle` (`call_at`,
    `call_later`, and through them `asyncio.sleep` and `asyncio.timeout`) or a bare future that
    `wake_at` resolves when its time comes, without a handle at all.
    """

    def __init__(self) -> None:
        super().__init__(_NoIoSelector())
        self._virtual_now = 0.0
        self._timers: list[tuple[float, int, Any]] = []
        self._sequence = itertools.count()

    def time(self) -> float:
        return self._virtual_now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        self._check_closed()  # type: ignore[attr-defined]
        timer = asyncio.TimerHandle(when, callback, args, self, context)
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        timer._scheduled = True  # type: ignore[attr-defined]  # so that cancel() counts it
        return timer

    def wake_at(self, when: float, future: asyncio.Future[None]) -> None:
        """Resolve `future` (with None) at `when`, unless it is done by then."""
        heapq.heappush(self._timers, (when, next(self._sequence), future))

    def _run_once(self) -> None:
        timers = self._timers
        ready = self._ready  # type: ignore[attr-defined]
        if self._timer_cancelled_count > _MIN_CANCELLED_TO_PURGE and \
                self._timer_cancelled_count * 2 > len(timers):  # type: ignore[attr-defined]
            timers[:] = [entry for entry in timers if not isinstance(entry[2], asyncio.TimerHandle)
                         or not entry[2]._cancelled]  # type: ignore[attr-defined]
            heapq.heapify(timers)
            self._timer_cancelled_count = 0
        if not ready and not self._stopping:  # type: ignore[attr-defined]
            if not timers:
                raise SimulationStalled("every task is waiting and no timer is set: on virtual time nothing "
                                        "can happen any more (a deadlock, or code waiting for real I/O)")
            when = timers[0][0]
            if when > self._virtual_now:
                self._virtual_now = when  # the jump: nothing else could happen before this timer
        now = self._virtual_now
        timer_class = asyncio.TimerHandle
        while timers and timers[0][0] <= now:
            item = heapq.heappop(timers)[2]
            if item.__class__ is timer_class:
                if item._cancelled:
                    self._timer_cancelled_count -= 1
                else:
                    item._scheduled = False
                    ready.append(item)
            elif not item.done():
                item.set_result(None)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()


def wake_at(loop: asyncio.AbstractEventLoop, when: float) -> asyncio.Future[None]:
    """A future resolved at loop time `when`: a bare heap entry on a `VirtualTimeLoop`, a timer on any
    other loop. Awaiting it is `asyncio.sleep` without its handle (cancelling the waiter leaves a stale
    entry that does nothing when its time comes)."""
    future: asyncio.Future[None] = loop.create_future()
    if isinstance(loop, VirtualTimeLoop):
        loop.wake_at(when, future)
    else:
        loop.call_at(when, _resolve, future)
    return future


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def run_virtual(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `main()` to completion on a fresh `VirtualTimeLoop`, then close the loop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main())
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


class LoopClock:
    """The router's clock, read from the running loop (virtual time on a `VirtualTimeLoop`).

    `LoopClock(loop)` reads that loop's clock directly: the router reads its clock about fifteen
    times a request, and looking up the running loop each time is a measurable share of a
    simulated request."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        if loop is not None:
            time = loop.time
            self.monotonic = time  # type: ignore[method-assign]
            self.wall = lambda: _WALL_OFFSET + time()  # type: ignore[method-assign]

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return _WALL_OFFSET + asyncio.get_running_loop().time()
