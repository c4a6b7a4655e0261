"""The request engine: one loop for retries and failover.

Composition order, for every request (chat or stream):

    admit -> plan -> breaker filter -> provider limit -> send -> classify -> record -> decide

- admit: the router resolved the route and took the client's limit tokens (router.py).
- plan: `planner.plan` picks the next target and the delay before it (pure).
- breaker filter / provider limit: `attempt.admit` takes the target's breaker permit and
  one request (plus the token estimate) from the provider's quota bucket.
- send: `Attempt.send`, through the transport's per-try timeouts capped by the deadline.
- classify: `classify.classify_*`, the only code that interprets answers.
- record: `Attempt` feeds the verdict to the breaker, the provider throttle, the quotas,
  the observer and the request's progress.
- decide: plan again, spending the retry budget for anything after attempt 1.

`Engine.attempts(call)` is that loop as an async iterator of `Attempt`s, in the shape of
stamina's `retry_context` (`async for attempt in ...: with attempt: ...`). Between attempts
it is tenacity's `AsyncRetrying`: our plan is its retry/wait/stop, so every delay goes
through tenacity's wait and the injected sleep.
The first attempt runs without tenacity, because that costs ~30 µs a request and most
requests succeed at once; its failure is replayed into tenacity.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

from tenacity import AsyncRetrying, RetryCallState

from router.clock import Clock
from router.engine.attempt import SKIPPED, Attempt, AttemptFailed, acquire_permit, admit, has_quota
from router.engine.call import Call
from router.engine.classify import Action, Reason, Verdict
from router.engine.planner import Decision, GiveUp, Go, plan
from router.errors import NoTargetAvailable, RateLimited, RouterError, UpstreamError
from router.observe.observer import Observer
from router.upstream.transport import Transport

_CONTEXT_ERRORS = frozenset({Reason.CONTEXT_LENGTH})
_TIMEOUT_REASONS = frozenset({Reason.FIRST_BYTE_TIMEOUT, Reason.TTFT_TIMEOUT, Reason.STREAM_STALL,
                              Reason.DEADLINE})


class Engine:
    def __init__(self, *, transport: Transport, observer: Observer, clock: Clock, rng: random.Random,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
        self.transport = transport
        self.observer = observer
        self.clock = clock
        self.rng = rng
        self.sleep = sleep

    def attempts(self, call: Call) -> Attempts:
        """The attempts of one request, each admitted and ready to send (see `Attempts`)."""
        return Attempts(self, call)

    def decide(self, call: Call) -> Decision:
        now = self.clock.monotonic()
        progress = call.progress
        decision = plan(call.tiers, progress, requested_model=call.request.model, now=now,
                        deadline=call.deadline, tokens=call.request.token_estimate,
                        retry=call.route.retry, strategy=call.route.strategy,
                        view=call.snapshot.ledger, rng=self.rng, stream=call.request.stream,
                        adaptive=call.route.adaptive)
        if isinstance(decision, Go) and progress.attempts > 0:
            if not call.snapshot.ledger.budget.try_spend(now):
                self.observer.retry_budget_exhausted(call.route.name)
                return GiveUp("retry_budget", retry_after=1.0)
            reason = progress.last_verdict.reason if progress.last_verdict else "unknown"
            self.observer.retried(call.route.name, str(reason))
            if decision.kind == "failover" and progress.last is not None:
                self.observer.failed_over(call.route.name, progress.last.provider, decision.target.provider)
        return decision

    # -- the answer when nothing worked -------------------------------------------------------
    def final_error(self, call: Call, give_up: GiveUp, failed: AttemptFailed | None) -> RouterError:
        progress = call.progress
        attempts = progress.attempts
        verdict = failed.verdict if failed else None
        provider = failed.target.provider if failed and failed.target else None
        if give_up.reason == "retry_budget":
            return NoTargetAvailable(_summary("retry budget exhausted", verdict, provider), attempts=attempts,
                                     retry_after=1.0)
        if give_up.reason == "throttled" and (verdict is None or verdict.reason is Reason.RATE_LIMITED):
            return RateLimited("every provider of this route is rate limited",
                               retry_after=give_up.retry_after or 1.0, scope="providers")
        if verdict is not None and verdict.reason is Reason.RATE_LIMITED and failed is not None \
                and failed.target is not None and give_up.reason in ("exhausted", "max_attempts"):
            # The last word was "slow down": the caller should come back later, not see a 502.
            until = call.snapshot.ledger.provider(failed.target.provider).throttled_until
            wait = until - self.clock.monotonic()
            return RateLimited("every provider of this route is rate limited",
                               retry_after=wait if wait > 0 else 1.0, scope="providers")
        if verdict is None:
            if give_up.reason == "deadline":
                return UpstreamError("request deadline exceeded before any attempt", status=504,
                                     reason=str(Reason.DEADLINE))
            retry_after = give_up.retry_after
            if retry_after is None:  # every target out (ejected, drained): say when one may be back
                retry_after = call.snapshot.ledger.route_down_for(call.tiers, self.clock.monotonic())
            return NoTargetAvailable("no target of this route is available", attempts=attempts,
                                     retry_after=retry_after)
        if verdict.action is Action.FATAL and verdict.reason is not Reason.DEADLINE:
            status = verdict.status or 400
            return UpstreamError(verdict.message or f"provider refused the request ({status})", status=status,
                                 body=failed.body if failed else b"", attempts=attempts, provider=provider,
                                 reason=str(verdict.reason), code=verdict.code)
        if verdict.reason in _CONTEXT_ERRORS:
            return UpstreamError(verdict.message or "the request exceeds the context length of every target",
                                 status=400, body=failed.body if failed else b"", attempts=attempts,
                                 provider=provider, reason=str(verdict.reason), code=verdict.code)
        if give_up.reason == "deadline" or verdict.reason in _TIMEOUT_REASONS:
            return UpstreamError(_summary("no provider answered in time", verdict, provider), status=504,
                                 attempts=attempts, provider=provider, reason=str(verdict.reason))
        down_for = call.snapshot.ledger.route_down_for(call.snapshot.tiers[call.route.name],
                                                       self.clock.monotonic())
        if down_for is not None:  # not one bad answer: every target is ejected, the route is down for now
            return NoTargetAvailable(_summary("every target of this route is ejected", verdict, provider),
                                     attempts=attempts, retry_after=down_for)
        return UpstreamError(_summary(f"all {attempts} upstream attempts failed", verdict, provider),
                             status=502, attempts=attempts, provider=provider, reason=str(verdict.reason))


class Attempts:
    """`async for attempt in engine.attempts(call)`: plan, admit, hand out; after a failed attempt,
    decide again through tenacity. Ends by raising the request's final error (a `RouterError`) when
    the plan gives up, or with StopAsyncIteration if the caller carries on after a success."""

    __slots__ = ("_call", "_current", "_decision", "_engine", "_last_failure", "_manager", "_pending",
                 "_retrying")

    def __init__(self, engine: Engine, call: Call) -> None:
        self._engine = engine
        self._call = call
        self._current: Attempt | None = None
        self._decision: Decision | None = None
        self._pending: BaseException | None = None  # what ended the last try, for tenacity to judge
        self._last_failure: AttemptFailed | None = None  # the last attempt that was sent and failed
        self._retrying: AsyncRetrying | None = None
        self._manager: object | None = None  # tenacity's AttemptManager of the try in progress

    def __aiter__(self) -> Attempts:
        return self

    async def __anext__(self) -> Attempt:
        current = self._current
        if current is not None:
            if current.failure is None:
                raise StopAsyncIteration  # the caller went on after a success or a commit
            self._pending, self._current = current.failure, None
        engine, call = self._engine, self._call
        while True:
            go = self._first() if self._pending is None and self._retrying is None else None
            if go is None:
                go = await self._next_target()
            permit = acquire_permit(engine, call, go)
            if permit is not None:
                # Most providers have no quota: the attempt starts without another await.
                attempt = await admit(engine, call, go, permit) if has_quota(call, go) \
                    else Attempt(engine, call, go.target, permit)
                if attempt is not None:
                    self._current = attempt
                    return attempt
            self._pending = AttemptFailed(SKIPPED, go.target, counted=False)

    def _first(self) -> Go | None:
        """The first decision of this loop: a target to try now, or None after arranging to wait."""
        engine, call = self._engine, self._call
        decision = engine.decide(call)
        self._decision = decision
        if isinstance(decision, GiveUp):
            raise engine.final_error(call, decision, None)
        if decision.delay <= 0:
            return decision
        self._pending = _Delayed()  # tenacity does the waiting
        return None

    async def _next_target(self) -> Go:
        """After a failed (or skipped, or delayed) try: decide through tenacity, which sleeps as decided."""
        engine, call = self._engine, self._call
        pending = self._pending
        if isinstance(pending, AttemptFailed) and pending.counted:
            self._last_failure = pending
        self._pending = None
        retrying = self._retrying
        if retrying is None:
            retrying = self._retrying = AsyncRetrying(retry=self._retry, wait=self._wait, stop=self._stop,
                                                      sleep=engine.sleep, reraise=True).__aiter__()
            self._manager = await retrying.__anext__()  # the try whose end is replayed below
        assert pending is not None
        self._manager.retry_state.set_exception((type(pending), pending, pending.__traceback__))  # type: ignore[attr-defined]
        try:
            self._manager = await retrying.__anext__()  # decides, sleeps as decided, or raises
        except (AttemptFailed, _Delayed, StopAsyncIteration):
            decision = self._decision
            final = decision if isinstance(decision, GiveUp) else GiveUp("exhausted")
            raise engine.final_error(call, final, self._last_failure) from None
        decision = self._decision
        assert isinstance(decision, Go)
        return decision

    # -- tenacity's retry / wait / stop, all read from our own decision -------------------------
    def _retry(self, state: RetryCallState) -> bool:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Delayed):
            return True  # the decision is already made: wait for it
        if not isinstance(exc, AttemptFailed):
            return False
        if exc.verdict.action is Action.FATAL:
            self._decision = None
            return False
        self._decision = self._engine.decide(self._call)
        return True

    def _wait(self, state: RetryCallState) -> float:
        decision = self._decision
        return decision.delay if isinstance(decision, Go) else 0.0

    def _stop(self, state: RetryCallState) -> bool:
        return not isinstance(self._decision, Go)


class _Delayed(Exception):
    """Replayed into tenacity when the very first decision already asks for a wait."""


def _summary(prefix: str, verdict: Verdict | None, provider: str | None) -> str:
    if verdict is None:
        return prefix
    status = f" {verdict.status}" if verdict.status else ""
    return f"{prefix}; last: {provider or 'provider'} {verdict.reason}{status}"

