"""The request engine: one loop for retries and failover.

Composition order, for every request (chat or stream):

    admit -> plan -> breaker filter -> provider limit -> send -> classify -> record -> decide

- admit: the router resolved the route and took the client's limit tokens.
- plan: `planner.plan` picks the next target and the delay before it (pure).
- breaker filter / provider limit: take the target's breaker permit and one
  request (plus the token estimate) from the provider's quota bucket.
- send: `transport.send` with per-try timeouts capped by the deadline.
- classify: `classify.classify_*`, the only code that interprets answers.
- record: breaker, provider throttle, token usage, observer, request progress.
- decide: plan again, spending the retry budget for anything after attempt 1.

The loop is tenacity's `AsyncRetrying` (our plan is its retry/wait/stop); the
first attempt runs without tenacity because that costs ~30 µs a request and
most requests succeed at once. Its failure is replayed into tenacity, so every
delay still goes through tenacity's wait and the injected sleep.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState

from router import jsonio
from router.clock import Clock
from router.engine.backoff import full_jitter
from router.engine.classify import Action, Reason, Verdict
from router.engine.planner import Decision, GiveUp, Go, Progress, plan
from router.errors import NoTargetAvailable, RateLimited, RouterError, UpstreamError
from router.health.backends import StateBackend
from router.health.breaker import Permit
from router.health.ledger import Ledger
from router.observe.observer import Observer
from router.policy.model import Policy, Route, Target
from router.request import ChatRequest
from router.upstream.transport import Transport

T = TypeVar("T")
Tiers = tuple[tuple[Target, ...], ...]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything a request needs, fixed for its whole life (reload swaps the snapshot)."""

    policy: Policy
    ledger: Ledger
    tiers: dict[str, Tiers]

    @classmethod
    def build(cls, policy: Policy, previous: Snapshot | None = None,
              backend: StateBackend | None = None) -> Snapshot:
        ledger = Ledger(policy, previous.ledger if previous else None, backend)
        tiers: dict[str, Tiers] = {}
        for name, route in policy.routes.items():
            levels = sorted({t.priority for t in route.targets})
            tiers[name] = tuple(tuple(t for t in route.targets if t.priority == p) for p in levels)
        return cls(policy=policy, ledger=ledger, tiers=tiers)


@dataclass(slots=True)
class Call:
    """One client request in flight: its snapshot, deadline and progress."""

    snapshot: Snapshot
    route: Route
    tiers: Tiers
    request: ChatRequest
    client: str
    started: float
    deadline: float
    progress: Progress = field(default_factory=Progress)
    next: Decision | None = None
    replay: BaseException | None = None
    last_failure: AttemptFailed | None = None
    tokens_reserved: int = 0


class AttemptFailed(Exception):
    """One attempt did not succeed; carries the verdict and the provider's answer."""

    def __init__(self, verdict: Verdict, target: Target | None, *, body: bytes = b"",
                 counted: bool = True) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict
        self.target = target
        self.body = body
        self.counted = counted  # False: no request was sent (the target became unavailable)


class _Delayed(Exception):
    """Replayed into tenacity when the very first decision already asks for a wait."""


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
        self._retrying = AsyncRetrying(retry=self._retry_cb, wait=self._wait_cb, stop=self._stop_cb,
                                       sleep=sleep, reraise=True)

    # -- the loop -------------------------------------------------------------------------
    async def run(self, call: Call, attempt: Callable[[Call, Go], Awaitable[T]]) -> T:
        decision = self.decide(call)
        call.next = decision
        if isinstance(decision, GiveUp):
            raise self.final_error(call, decision)
        if decision.delay <= 0:
            try:
                return await attempt(call, decision)
            except AttemptFailed as failed:
                if failed.counted:
                    call.last_failure = failed
                call.replay = failed
        else:
            call.replay = _Delayed()
        try:
            return await self._retrying.copy()(_step, call, attempt)
        except (AttemptFailed, _Delayed):
            pass
        final = call.next if isinstance(call.next, GiveUp) else GiveUp("exhausted")
        raise self.final_error(call, final)

    def _retry_cb(self, state: RetryCallState) -> bool:
        call: Call = state.args[0]
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, _Delayed):
            return True  # the decision is already made: wait for it
        if not isinstance(exc, AttemptFailed):
            return False
        if exc.verdict.action is Action.FATAL:
            call.next = None
            return False
        call.next = self.decide(call)
        return True

    def _wait_cb(self, state: RetryCallState) -> float:
        decision = state.args[0].next
        return decision.delay if isinstance(decision, Go) else 0.0

    def _stop_cb(self, state: RetryCallState) -> bool:
        return not isinstance(state.args[0].next, Go)

    def decide(self, call: Call) -> Decision:
        now = self.clock.monotonic()
        progress = call.progress
        decision = plan(call.tiers, progress, requested_model=call.request.model, now=now,
                        deadline=call.deadline, tokens=call.request.token_estimate,
                        retry=call.route.retry, strategy=call.route.strategy,
                        view=call.snapshot.ledger, rng=self.rng)
        if isinstance(decision, Go) and progress.attempts > 0:
            if not call.snapshot.ledger.budget.try_spend(now):
                self.observer.retry_budget_exhausted(call.route.name)
                return GiveUp("retry_budget", retry_after=1.0)
            reason = progress.last_verdict.reason if progress.last_verdict else "unknown"
            self.observer.retried(call.route.name, str(reason))
            if decision.kind == "failover" and progress.last is not None:
                self.observer.failed_over(call.route.name, progress.last.provider, decision.target.provider)
        return decision

    # -- shared pieces of an attempt ------------------------------------------------------------
    async def admit_target(self, call: Call, go: Go) -> Permit:
        """Breaker permit and provider quota for `go.target`, or AttemptFailed(counted=False)."""
        state = call.snapshot.ledger
        now = self.clock.monotonic()
        breaker = state.breaker(go.target)
        permit = breaker.acquire(now) or (breaker.force_acquire() if go.forced else None)
        if permit is None:
            call.progress.excluded.add(go.target.key)
            raise AttemptFailed(_SKIPPED, go.target, counted=False)
        quota = state.provider(go.target.provider).quota
        if quota is not None:
            try:
                wait, _ = await quota.take(call.request.token_estimate, 0.0)
            except BaseException:
                breaker.on_neutral(permit)  # a probe permit must not stay out forever
                raise
            if wait > 0:
                breaker.on_neutral(permit)
                call.progress.excluded.add(go.target.key)
                raise AttemptFailed(_SKIPPED, go.target, counted=False)
        return permit

    def record(self, call: Call, target: Target, permit: Permit, verdict: Verdict, *, started: float,
               ttfb: float | None, report: bool = True) -> None:
        """Feed one verdict to the breaker, the throttle, the observer and the request's progress."""
        state = call.snapshot.ledger
        now = self.clock.monotonic()
        breaker = state.breaker(target)
        provider_name = target.provider
        if verdict.ok:
            if breaker.on_success(permit):
                self.observer.breaker_changed(provider_name, target.key, "closed")
        elif verdict.long_ejection or verdict.breaker_failure:
            if verdict.long_ejection:
                breaker.eject_for_max(now)
                opened = True
            else:
                opened = breaker.on_failure(permit, now)
            if opened and breaker.open_until is not None:
                state.ejected(target, breaker.open_until, now)
                self.observer.breaker_changed(provider_name, target.key, "open")
        else:
            breaker.on_neutral(permit)
        progress = call.progress
        progress.attempts += 1
        progress.per_target[target.key] = progress.per_target.get(target.key, 0) + 1
        progress.last = target
        progress.last_verdict = verdict
        if verdict.throttle:
            retry = call.route.retry
            delay = verdict.retry_after
            if delay is None:  # no usable header: back off, never retry at once
                delay = max(retry.base_interval_s,
                            full_jitter(progress.per_target[target.key], retry.base_interval_s,
                                        retry.max_interval_s, self.rng))
            state.throttle(provider_name, now + delay, now)
            self.observer.provider_throttled(provider_name)
        if verdict.action is Action.FAILOVER:
            progress.excluded.add(target.key)
        if verdict.long_ejection:
            progress.excluded.update(t.key for tier in call.tiers for t in tier if t.provider == provider_name)
        if verdict.exclude_model:
            progress.excluded_models.add(target.upstream_model(call.request.model))
        if not verdict.ok:
            quota = state.provider(provider_name).quota
            if quota is not None:
                quota.adjust_tokens(-call.request.token_estimate)
        if report:  # a committed stream reports its attempt when it ends
            self.observer.attempt_finished(call.route.name, provider_name, str(verdict.reason),
                                           now - started, ttfb)

    def abandoned(self, call: Call, target: Target, exc: BaseException, *, started: float,
                  ttfb: float | None) -> None:
        """Report an attempt that ended without a verdict: cancelled by the caller (or a bug)."""
        outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "internal_error"
        self.observer.attempt_finished(call.route.name, target.provider, outcome,
                                       self.clock.monotonic() - started, ttfb)

    def settle_tokens(self, call: Call, target: Target, usage: object, *, measured: bool = True) -> None:
        """Reconcile the token reservations with the provider's reported `usage`.

        `measured=False`: `usage` is our own estimate (a stream without a usage chunk); it settles the
        reservations but is not reported as tokens used."""
        prompt, completion = usage_counts(usage)
        if prompt is None:
            return
        actual = prompt + (completion or 0)
        quota = call.snapshot.ledger.provider(target.provider).quota
        if quota is not None:
            quota.adjust_tokens(actual - call.request.token_estimate)
        client = call.snapshot.policy.client_named(call.client) if call.tokens_reserved else None
        if client is not None:
            client_quota = call.snapshot.ledger.client(client).quota
            if client_quota is not None:
                client_quota.adjust_tokens(actual - call.tokens_reserved)
                call.tokens_reserved = 0
        if measured:
            self.observer.tokens_used(call.route.name, target.provider, prompt, completion or 0)

    # -- the answer when nothing worked -------------------------------------------------------
    def final_error(self, call: Call, give_up: GiveUp) -> RouterError:
        progress = call.progress
        attempts = progress.attempts
        failed = call.last_failure
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
            return NoTargetAvailable("no target of this route is available", attempts=attempts,
                                     retry_after=give_up.retry_after)
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
        down_for = self._route_down_for(call)
        if down_for is not None:  # not one bad answer: every target is ejected, the route is down for now
            return NoTargetAvailable(_summary("every target of this route is ejected", verdict, provider),
                                     attempts=attempts, retry_after=down_for)
        return UpstreamError(_summary(f"all {attempts} upstream attempts failed", verdict, provider),
                             status=502, attempts=attempts, provider=provider, reason=str(verdict.reason))


    def _route_down_for(self, call: Call) -> float | None:
        """Seconds until a target of the route is admitted again if every target's breaker is open, else None."""
        now = self.clock.monotonic()
        state = call.snapshot.ledger
        until: list[float] = []
        for tier in call.snapshot.tiers[call.route.name]:
            for target in tier:
                breaker = state.breaker(target)
                if breaker.available(now) or breaker.open_until is None:
                    return None
                until.append(breaker.open_until)
        return max(min(until) - now, 0.0)


async def _step(call: Call, attempt: Callable[[Call, Go], Awaitable[T]]) -> T:
    if call.replay is not None:
        replay, call.replay = call.replay, None
        raise replay
    decision = call.next
    assert isinstance(decision, Go)
    try:
        return await attempt(call, decision)
    except AttemptFailed as failed:
        if failed.counted:
            call.last_failure = failed
        raise


# A target that became unavailable between planning and sending: not an attempt, just plan again.
_SKIPPED = Verdict(Action.RETRY, Reason.OK)


def _summary(prefix: str, verdict: Verdict | None, provider: str | None) -> str:
    if verdict is None:
        return prefix
    status = f" {verdict.status}" if verdict.status else ""
    return f"{prefix}; last: {provider or 'provider'} {verdict.reason}{status}"


def outcome_of(exc: BaseException) -> str:
    """The closed-set outcome label of a request that ended with `exc`."""
    if isinstance(exc, asyncio.CancelledError):
        return "cancelled"
    if isinstance(exc, RateLimited):
        return "rate_limited" if exc.scope == "client" else "providers_rate_limited"
    if isinstance(exc, NoTargetAvailable):
        return "no_target"
    if isinstance(exc, UpstreamError):
        return exc.reason
    if isinstance(exc, RouterError):
        return exc.code or exc.error_type
    return "internal_error"


def usage_counts(usage: object) -> tuple[int | None, int | None]:
    if not isinstance(usage, dict):
        return None, None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    prompt_ok = isinstance(prompt, int) and not isinstance(prompt, bool) and prompt >= 0
    completion_ok = isinstance(completion, int) and not isinstance(completion, bool) and completion >= 0
    return (prompt if prompt_ok else None), (completion if completion_ok else None)


def parse_json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = jsonio.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None
