"""Running a request's attempts, with first-token hedging where the route asks for it.

`run_attempts(engine, call, body)` is the loop every request uses: `body(attempt)` sends one
attempt and returns once it reached the commit point (a whole JSON answer; a stream's first
event), or fails it; the engine's `attempts(call)` plans the next one.

With `hedge:` on the route, the first attempt races a second one: when the first has not started
answering after the delay (`after_s`, or `after_quantile` of its target's recent times to first
byte), a second attempt starts on the next eligible target, as the planner would choose it with
the first target left out. The first of the two to reach the commit point wins; the other is
cancelled, which closes its upstream connection at once and says nothing about its target's health
(its attempt is reported `cancelled`). Hedges come out of a budget: `max_percent` of the route's
requests over the last 10 s; a hedge the budget refuses is counted as suppressed. When both fail,
the loop goes on as after any failed attempt. Only the first attempt is hedged: a retry already
follows a failure, and hedging it would multiply load during an outage.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from router.engine.attempt import Attempt, acquire_permit, admit, has_quota
from router.engine.call import Call
from router.engine.loop import Engine
from router.engine.planner import Go
from router.policy.model import HedgePolicy

T = TypeVar("T")
Body = Callable[[Attempt], Awaitable[T]]


async def run_attempts(engine: Engine, call: Call, body: Body[T], *, answered: Callable[[Attempt], bool],
                       discard: Callable[[T], Awaitable[None]] | None = None) -> T:
    """Attempts until one reaches the commit point; raises the request's final error otherwise.

    `answered(attempt)`: whether the attempt has started answering (no hedge is needed then).
    `discard(result)`: releases a result that reached the commit point but lost the race."""
    hedge = call.route.hedge
    if hedge is not None:
        call.snapshot.ledger.hedge_budget(call.route.name).record_request(engine.clock.monotonic())
    async for attempt in engine.attempts(call):
        if hedge is not None and call.progress.attempts == 0:
            won = await _race(engine, call, attempt, body, hedge, answered, discard)
            if won is not None:
                return won[0]
            continue
        with attempt:
            result = await body(attempt)
        if attempt.failure is None:
            return result
    raise AssertionError("the attempts end with a result or the final error")


async def _race(engine: Engine, call: Call, primary: Attempt, body: Body[T], hedge: HedgePolicy,
                answered: Callable[[Attempt], bool],
                discard: Callable[[T], Awaitable[None]] | None) -> tuple[T] | None:
    """The first attempt, hedged after the delay. Returns (result,), or None when every attempt of
    the race failed (each failure is recorded on its attempt)."""
    tasks: dict[asyncio.Future[T | None], Attempt] = {asyncio.ensure_future(_run(primary, body)): primary}
    try:
        first = next(iter(tasks))
        await asyncio.wait(tasks, timeout=_delay(call, primary, hedge))
        if not first.done() and not answered(primary):
            hedge_attempt = await _hedge_attempt(engine, call, primary)
            if hedge_attempt is not None:
                tasks[asyncio.ensure_future(_run(hedge_attempt, body))] = hedge_attempt
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                attempt = tasks[task]
                if attempt.failure is None:  # reached the commit point
                    if len(tasks) > 1:
                        engine.observer.hedged(call.route.name, "lost" if attempt is primary else "won")
                    await _cancel(pending, discard)
                    return (task.result(),)  # type: ignore[arg-type]
        if len(tasks) > 1:
            engine.observer.hedged(call.route.name, "lost")  # neither answered: the hedge did not help
        return None
    except BaseException:
        await _cancel({task for task in tasks if not task.done()}, discard)
        raise


async def _run(attempt: Attempt, body: Body[T]) -> T | None:
    with attempt:
        return await body(attempt)
    return None  # the attempt failed (recorded on it); `with` swallowed the failure


def _delay(call: Call, primary: Attempt, hedge: HedgePolicy) -> float:
    if hedge.after_quantile is not None:
        observed = call.snapshot.ledger.stats(primary.target).first_byte_quantile(
            hedge.after_quantile, stream=call.request.stream)
        if observed is not None:
            return observed
    return hedge.after_s


async def _hedge_attempt(engine: Engine, call: Call, primary: Attempt) -> Attempt | None:
    """The hedge: the planner's choice with the first target left out, if the budget allows one."""
    now = engine.clock.monotonic()
    budget = call.snapshot.ledger.hedge_budget(call.route.name)
    progress, key = call.progress, primary.target.key
    left_out = key not in progress.excluded
    progress.excluded.add(key)
    try:
        decision = engine.decide(call)
    finally:
        if left_out:
            progress.excluded.discard(key)
    if not isinstance(decision, Go) or decision.delay > 0:
        return None  # nowhere to hedge to right now
    if not budget.try_spend(now):
        engine.observer.hedged(call.route.name, "suppressed")
        return None
    permit = acquire_permit(engine, call, decision)
    if permit is None:
        return None
    attempt = await admit(engine, call, decision, permit) if has_quota(call, decision) \
        else Attempt(engine, call, decision.target, permit)
    if attempt is not None and attempt.span is not None:
        attempt.span.hedge()
    return attempt


async def _cancel(tasks: set[asyncio.Future[T | None]],
                  discard: Callable[[T], Awaitable[None]] | None) -> None:
    """Cancel the race's other attempts (closing their connections), and release any that reached the
    commit point in the meantime."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        try:
            result = await task
        except asyncio.CancelledError:
            continue
        except Exception:
            continue
        if result is not None and discard is not None:
            await discard(result)
