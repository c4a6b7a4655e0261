"""Virtual time: an event loop whose clock jumps to the next timer whenever nothing is ready.

Minutes of traffic (thousands of requests in flight, providers that stall, time out, recover) run
through the real `Router` in a fraction of the time, and give the same result on a loaded machine as
on a quiet one: nothing depends on how fast the machine is. A silent provider that makes the router
wait 30 s for a first byte costs one timer, not 30 seconds.

Only code that does no real I/O and starts no threads may run on it: with nothing ready and no timer
set, a real loop would wait for a socket; this one raises `SimulationStalled` instead of hanging.

`call_soon`, `call_at` and `_run_once` are replaced, because a simulated request is mostly timers
and wake-ups: asyncio's `_run_once` polls a selector every iteration (a system call) and keeps
timers in a heap compared in Python, and its handles cost a `get_debug()` call each. These keep the
same contract (due timers move to the ready queue in time order, ties in the order they were set;
ready callbacks run in order; cancelled ones never run; an exception goes to the exception handler)
and use the private attributes asyncio's own do (`_ready`, `_timer_cancelled_count`, `_stopping`,
the handles' slots), which CPython 3.11-3.13 all keep; `tests/sim/test_loop.py` pins the behaviour.
asyncio's debug mode is not honoured on this loop.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import heapq
import itertools
import operator
import selectors
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# Rebuild the timer heap when more than half of it is cancelled timers (every answered attempt leaves
# its cancelled first-byte timeout behind, due up to `first_byte_s` later) and there are this many.
_MIN_CANCELLED_TO_PURGE = 1000
_WALL_OFFSET = 1_700_000_000.0  # a plausible wall clock for HTTP-dates: virtual second 0 is Nov 2023


_VIRTUAL_NOW = operator.attrgetter("_virtual_now")
_NEW_HANDLE = object.__new__


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
        # `time()` is called a dozen times a request: a C-level callable rather than a method.
        self.time = functools.partial(_VIRTUAL_NOW, self)  # type: ignore[method-assign]

    def time(self) -> float:
        return self._virtual_now

    def call_at(self, when: float, callback: Callable[..., object], *args: Any,
                context: contextvars.Context | None = None) -> asyncio.TimerHandle:
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        timer = _NEW_HANDLE(_Timer)  # TimerHandle.__init__ without its get_debug() call
        timer._callback, timer._args, timer._loop, timer._when = callback, args, self, when  # type: ignore[attr-defined]
        timer._context = context if context is not None else contextvars.copy_context()  # type: ignore[attr-defined]
        timer._cancelled, timer._repr, timer._source_traceback = False, None, None  # type: ignore[attr-defined]
        timer._scheduled = True  # type: ignore[attr-defined]  # in the heap: cancel() counts it
        heapq.heappush(self._timers, (when, next(self._sequence), timer))
        return timer

    def call_soon(self, callback: Callable[..., object], *args: Any,
                  context: contextvars.Context | None = None) -> asyncio.Handle:
        # asyncio's, without its debug-mode checks and one call level: every wake-up of a task comes here.
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        handle = _NEW_HANDLE(asyncio.Handle)  # Handle.__init__ without its get_debug() call
        handle._callback, handle._args, handle._loop = callback, args, self  # type: ignore[attr-defined]
        handle._context = context if context is not None else contextvars.copy_context()  # type: ignore[attr-defined]
        handle._cancelled, handle._repr, handle._source_traceback = False, None, None  # type: ignore[attr-defined]
        self._ready.append(handle)  # type: ignore[attr-defined]
        return handle

    def wake_at(self, when: float, future: asyncio.Future[None]) -> None:
        """Resolve `future` (with None) at `when`, unless it is done by then."""
        heapq.heappush(self._timers, (when, next(self._sequence), future))

    def run_at(self, when: float, callback: Callable[[], object]) -> None:
        """Call `callback()` at `when`, with no handle to cancel it (nor its cost): for a chain of arrivals."""
        heapq.heappush(self._timers, (when, next(self._sequence), _Call(callback)))

    def _run_once(self) -> None:
        """asyncio's `run_forever` calls this in a loop until the loop stops; here it runs the iterations
        itself (the same steps: due timers to the ready queue, then what was ready), with the lookups done
        once rather than once an iteration."""
        timers, ready = self._timers, self._ready  # type: ignore[attr-defined]
        heappop, popleft, timer_class = heapq.heappop, ready.popleft, _Timer
        while True:
            if self._timer_cancelled_count > _MIN_CANCELLED_TO_PURGE and \
                    self._timer_cancelled_count * 2 > len(timers):  # type: ignore[attr-defined]
                self._purge_cancelled()
            if not ready:
                if not timers:
                    if self._stopping:  # type: ignore[attr-defined]
                        return
                    raise SimulationStalled("every task is waiting and no timer is set: on virtual time "
                                            "nothing can happen any more (a deadlock, or code waiting for I/O)")
                if not self._stopping and timers[0][0] > self._virtual_now:  # type: ignore[attr-defined]
                    self._virtual_now = timers[0][0]  # the jump: nothing else could happen before this timer
            now = self._virtual_now
            while timers and timers[0][0] <= now:
                item = heappop(timers)[2]
                if item.__class__ is timer_class:
                    if item._cancelled:
                        self._timer_cancelled_count -= 1
                    else:
                        item._scheduled = False
                        ready.append(item)
                elif item.__class__ is _Call:
                    ready.append(item)
                elif not item.done():
                    item.set_result(None)
            for _ in range(len(ready)):
                handle = popleft()
                if not handle._cancelled:
                    try:  # Handle._run, inline
                        handle._context.run(handle._callback, *handle._args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        self.call_exception_handler({"message": f"Exception in callback {handle!r}",
                                                     "exception": exc, "handle": handle})
            if self._stopping:  # type: ignore[attr-defined]
                return

    def _purge_cancelled(self) -> None:
        timers = self._timers
        timers[:] = [entry for entry in timers
                     if entry[2].__class__ is not _Timer or not entry[2]._cancelled]
        heapq.heapify(timers)
        self._timer_cancelled_count = 0


class _Timer(asyncio.TimerHandle):
    """A TimerHandle whose cancel() skips the debug-mode bookkeeping (the transport cancels one an attempt)."""

    __slots__ = ()

    def cancel(self) -> None:
        if not self._cancelled:  # type: ignore[has-type]
            self._cancelled = True
            self._callback = self._args = None  # type: ignore[assignment]
            if self._scheduled:  # type: ignore[has-type]
                self._loop._timer_cancelled_count += 1  # type: ignore[attr-defined]


class _Call:
    """What `run_at` queues: run like a handle (the same attributes), but never cancelled."""

    __slots__ = ("_args", "_callback", "_cancelled", "_context")

    def __init__(self, callback: Callable[[], object]) -> None:
        self._callback = callback
        self._args = ()
        self._cancelled = False
        self._context = contextvars.copy_context()


def call_at(loop: asyncio.AbstractEventLoop, when: float, callback: Callable[[], object]) -> None:
    """`loop.call_at(when, callback)` without a handle to cancel it: lighter on a `VirtualTimeLoop`."""
    if isinstance(loop, VirtualTimeLoop):
        loop.run_at(when, callback)
    else:
        loop.call_at(when, callback)


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


def waker(loop: asyncio.AbstractEventLoop) -> Callable[[float], asyncio.Future[None]]:
    """`wake_at` bound to `loop`: on a `VirtualTimeLoop`, a closure over its heap (the simulated wire
    sleeps once or twice an attempt)."""
    if not isinstance(loop, VirtualTimeLoop):
        return functools.partial(wake_at, loop)
    timers, sequence, create_future, heappush = loop._timers, loop._sequence, loop.create_future, heapq.heappush

    def wake(when: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = create_future()
        heappush(timers, (when, next(sequence), future))
        return future

    return wake


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
