"""Virtual time: an event loop whose clock jumps to the next timer whenever nothing is ready.

Minutes of traffic (thousands of requests in flight, providers that stall, time out, recover) run
through the real `Router` in a fraction of the time, and give the same result on a loaded machine as
on a quiet one: nothing depends on how fast the machine is. A silent provider that makes the router
wait 30 s for a first byte costs one timer, not 30 seconds.

Only code that does no real I/O and starts no threads may run on it: with nothing ready and no timer
set, a real loop would wait for a socket; this one raises `SimulationStalled` instead of hanging.

`_run_once` is replaced (asyncio's own polls a selector every iteration, ~2 µs of system call a
timer): it moves due timers to the ready queue and runs them, as asyncio's does, but never polls and
never sleeps. It reads the same private attributes asyncio's `_run_once` does (`_ready`, `_scheduled`,
`_timer_cancelled_count`, `_stopping`), which CPython 3.11-3.13 all keep;
`tests/sim/test_loop.py` pins the behaviour.
"""

from __future__ import annotations

import asyncio
import heapq
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# As asyncio's own loop: rebuild the timer heap when more than half of it is cancelled timers (every
# answered attempt leaves its cancelled first-byte timeout behind) and it holds more than this many.
_MIN_HEAP_TO_PURGE = 100
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
    """`time()` is virtual: it starts at 0 and, when every task waits for a timer, jumps to that timer."""

    def __init__(self) -> None:
        super().__init__(_NoIoSelector())
        self._virtual_now = 0.0

    def time(self) -> float:
        return self._virtual_now

    def _run_once(self) -> None:
        scheduled: list[asyncio.TimerHandle] = self._scheduled  # type: ignore[attr-defined]
        ready = self._ready  # type: ignore[attr-defined]
        count = len(scheduled)
        if count > _MIN_HEAP_TO_PURGE and self._timer_cancelled_count * 2 > count:  # type: ignore[attr-defined]
            kept = []
            for handle in scheduled:
                if handle._cancelled:  # type: ignore[attr-defined]
                    handle._scheduled = False  # type: ignore[attr-defined]
                else:
                    kept.append(handle)
            heapq.heapify(kept)
            self._scheduled = scheduled = kept
            self._timer_cancelled_count = 0
        else:
            while scheduled and scheduled[0]._cancelled:  # type: ignore[attr-defined]
                self._timer_cancelled_count -= 1
                heapq.heappop(scheduled)._scheduled = False  # type: ignore[attr-defined]
        if not ready and not self._stopping:  # type: ignore[attr-defined]
            if not scheduled:
                raise SimulationStalled("every task is waiting and no timer is set: on virtual time nothing "
                                        "can happen any more (a deadlock, or code waiting for real I/O)")
            when = scheduled[0]._when  # type: ignore[attr-defined]
            if when > self._virtual_now:
                self._virtual_now = when  # the jump: nothing else could happen before this timer
        now = self._virtual_now
        while scheduled and scheduled[0]._when <= now:  # type: ignore[attr-defined]
            handle = heapq.heappop(scheduled)
            handle._scheduled = False  # type: ignore[attr-defined]
            ready.append(handle)
        for _ in range(len(ready)):
            handle = ready.popleft()
            if not handle._cancelled:
                handle._run()


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
    """The router's clock, read from the running loop (virtual time on a `VirtualTimeLoop`)."""

    __slots__ = ()

    def monotonic(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return _WALL_OFFSET + asyncio.get_running_loop().time()
