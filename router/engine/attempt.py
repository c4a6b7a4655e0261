"""One upstream attempt, from its admission to its recorded end. The only code that changes a target's
breaker, a provider's throttle and quota, and in-flight counts on behalf of a request.

`Engine.attempts(call)` plans a target, admits it here (`admit`: the breaker's permit and one
request from the provider's quota) and hands out the `Attempt`. The JSON path, the streaming
path and a stream's continuation all use it the same way:

    async for attempt in engine.attempts(call):
        with attempt:
            reply = await attempt.send(body, stream=False)
            ...
            attempt.check(verdict)      # a verdict that is not a success ends the attempt
        return result

How an attempt ends, all decided in `__exit__` (a plain `with`: leaving the block awaits nothing):

- the block finishes: a success, recorded as such;
- a `TransportError` is classified here (`classify_exception`), recorded and swallowed, and so is
  `attempt.fail(verdict)`: the loop then plans the next attempt (or raises the final error);
- anything else (the caller cancelled, or a bug) abandons the attempt: a breaker probe permit is
  handed back, the attempt is reported `cancelled`, and the exception propagates.

A stream calls `commit()` when its first event arrived. Its attempt then stays open (counted in
flight, its connection held) after the block, until `end(verdict)` at the stream's end or
`abandon()`. A verdict after the commit point (a cut, a stall, an error event) is recorded like
any other: a fail-over verdict takes the target out of this request's plan, so a continuation
never goes back to a target that stalled.
"""

from __future__ import annotations

import asyncio
import enum
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn

from router.engine.backoff import full_jitter
from router.engine.call import Call
from router.engine.classify import SUCCESS, Action, Reason, Verdict, classify_exception
from router.engine.limit_headers import LimitHint, read_limits, throttle_for
from router.engine.outcome import CANCELLED, INTERNAL_ERROR, usage_counts
from router.engine.planner import Go
from router.health.breaker import Permit
from router.policy.model import Target
from router.upstream.errors import TransportError
from router.upstream.transport import Outgoing, Reply

if TYPE_CHECKING:
    from router.engine.loop import Engine
    from router.observe.tracing import AttemptSpan, RequestSpan

# A target that became unavailable between planning and sending: not an attempt, just plan again.
SKIPPED = Verdict(Action.RETRY, Reason.OK)
_LATE = Permit(probe=False)  # a committed stream settled its permit at the commit


class AttemptFailed(Exception):
    """One attempt did not succeed; carries the verdict and the provider's answer."""

    def __init__(self, verdict: Verdict, target: Target | None, *, body: bytes = b"",
                 counted: bool = True) -> None:
        super().__init__(verdict.reason)
        self.verdict = verdict
        self.target = target
        self.body = body
        self.counted = counted  # False: nothing was sent (the target became unavailable first)


class _Phase(enum.Enum):
    SENDING = "sending"  # admitted and counted in flight: the block is running
    COMMITTED = "committed"  # a stream's first event arrived: open until end() or abandon()
    ENDED = "ended"


def acquire_permit(engine: Engine, call: Call, go: Go) -> Permit | None:
    """The breaker's permit for `go.target`, or None (and the target is out of this request's plan)
    when it became unavailable since it was planned."""
    breaker = call.snapshot.ledger.breaker(go.target)
    permit = breaker.acquire(engine.clock.monotonic()) or (breaker.force_acquire() if go.forced else None)
    if permit is None:
        call.progress.excluded.add(go.target.key)
    return permit


async def admit(engine: Engine, call: Call, go: Go, permit: Permit) -> Attempt | None:
    """One request (and the token estimate) from the provider's quota, then the attempt; None (the
    permit handed back, the target out of this request's plan) when the quota is empty."""
    ledger = call.snapshot.ledger
    quota = ledger.provider(go.target.provider).quota
    if quota is not None:
        breaker = ledger.breaker(go.target)
        try:
            wait, _ = await quota.take(call.request.token_estimate, 0.0)
        except BaseException:
            breaker.on_neutral(permit)  # a probe permit must not stay out forever
            raise
        if wait > 0:
            breaker.on_neutral(permit)
            call.progress.excluded.add(go.target.key)
            return None
    return Attempt(engine, call, go.target, permit)


def has_quota(call: Call, go: Go) -> bool:
    """Whether admitting `go.target` takes from a provider quota (which may wait on a shared backend)."""
    return call.snapshot.ledger.provider(go.target.provider).quota is not None


class Attempt:
    """One attempt on `target` (see the module docstring)."""

    __slots__ = ("_engine", "_permit", "_phase", "_reply", "_verdict", "call", "failure", "span", "started",
                 "target", "ttfb", "upstream_model")

    def __init__(self, engine: Engine, call: Call, target: Target, permit: Permit) -> None:
        self._engine = engine
        self.call = call
        self.target = target
        self._permit = permit
        self._phase = _Phase.SENDING
        self._reply: Reply | None = None
        self._verdict = SUCCESS
        self.failure: AttemptFailed | None = None  # how it failed, for the loop's next decision
        self.upstream_model = target.upstream_model(call.request.model)
        self.ttfb: float | None = None
        request_span = call.record.span
        self.span = None if request_span is None else self._start_span(request_span)
        call.snapshot.ledger.begin(target)
        self.started = engine.clock.monotonic()

    @property
    def committed(self) -> bool:
        return self._phase is _Phase.COMMITTED

    # -- inside the block ----------------------------------------------------------------------
    async def send(self, body: bytes, *, stream: bool) -> Reply:
        """Send `body` to the target; returns once the answer's head arrived (TransportError otherwise).
        The reply belongs to the attempt, which closes it when it ends."""
        call = self.call
        outgoing = Outgoing(provider=call.snapshot.policy.providers[self.target.provider], body=body,
                            request_id=call.request.request_id, stream=stream, deadline=call.deadline,
                            traceparent=None if self.span is None else self.span.traceparent)
        reply = await self._engine.transport.send(outgoing)
        self._reply = reply
        self.ttfb = self._engine.clock.monotonic() - self.started
        if getattr(reply, "resent", False):
            self._engine.observer.upstream_resent(self.target.provider)
        return reply

    def check(self, verdict: Verdict, body: bytes = b"") -> None:
        """Keep a success's verdict (its status) for the record; anything else ends the attempt."""
        if not verdict.ok:
            raise AttemptFailed(verdict, self.target, body=body)
        self._verdict = verdict

    def fail(self, verdict: Verdict, body: bytes = b"") -> NoReturn:
        raise AttemptFailed(verdict, self.target, body=body)

    def commit(self) -> None:
        """A stream's first event arrived: a success for the target's health, but the attempt stays
        open until the stream ends (and is reported then)."""
        self._record(self._verdict, self._permit)
        self._phase = _Phase.COMMITTED

    def __enter__(self) -> Attempt:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool:
        if self._phase is not _Phase.SENDING:
            if exc is not None and self._phase is _Phase.COMMITTED:
                self.abandon(exc)
            return False
        if exc is None:
            self._report(str(self._verdict.reason), self._record(self._verdict, self._permit))
            self._close()
            return False
        if isinstance(exc, AttemptFailed):
            failure = exc
        elif isinstance(exc, TransportError):
            if exc.resent:
                self._engine.observer.upstream_resent(self.target.provider)
            failure = AttemptFailed(classify_exception(exc), self.target)
        else:
            self.abandon(exc)
            return False
        self._report(str(failure.verdict.reason), self._record(failure.verdict, self._permit))
        self._close()
        self.failure = failure
        return True

    # -- after the commit point ----------------------------------------------------------------
    def end(self, verdict: Verdict) -> None:
        """A committed stream ended: complete (a success verdict), or cut, stalled or errored."""
        if self._phase is not _Phase.COMMITTED:
            return
        self._report(str(verdict.reason), self._record(verdict, _LATE, late=True) if not verdict.ok else None)
        self._close()

    def abandon(self, exc: BaseException | None = None) -> None:
        """The caller went away (or a bug): the attempt says nothing about the provider's health."""
        if self._phase is _Phase.ENDED:
            return
        if self._phase is _Phase.SENDING:
            self.call.snapshot.ledger.breaker(self.target).on_neutral(self._permit)
        self._report(INTERNAL_ERROR if exc is not None and not isinstance(exc, asyncio.CancelledError)
                     else CANCELLED)
        self._close()

    def settle(self, usage: object, *, measured: bool = True) -> None:
        """Reconcile the token reservations (provider quota, client bucket) with the provider's `usage`.

        `measured=False`: `usage` is our own estimate (a stream without a usage chunk); it settles the
        reservations but is not reported as tokens used."""
        call, engine = self.call, self._engine
        prompt, completion = usage_counts(usage)
        if measured:  # what the access log shows, as the provider reported it
            call.record.prompt_tokens, call.record.completion_tokens = prompt, completion
        if prompt is None:
            return
        actual = prompt + (completion or 0)
        ledger = call.snapshot.ledger
        quota = ledger.provider(self.target.provider).quota
        if quota is not None:
            quota.adjust_tokens(actual - call.request.token_estimate)
        if call.tokens_reserved:
            client = call.snapshot.policy.client_named(call.client)
            client_quota = ledger.client(client).quota if client is not None else None
            if client_quota is not None:
                client_quota.adjust_tokens(actual - call.tokens_reserved)
            call.tokens_reserved = 0
        if measured:
            engine.observer.tokens_used(call.route.name, self.target.provider, prompt, completion or 0)
            if self.span is not None and call.record.span is not None:
                self.span.usage(prompt, completion, self.upstream_model)
                call.record.span.usage(prompt, completion)

    # -- the one place a verdict changes health ------------------------------------------------
    def _record(self, verdict: Verdict, permit: Permit, *, late: bool = False) -> float:
        """Feed a verdict to the breaker, the throttle, the provider's quota and the request's progress.
        `late`: the verdict of a stream after its commit, whose attempt was already counted."""
        engine, call, target = self._engine, self.call, self.target
        ledger = call.snapshot.ledger
        now = engine.clock.monotonic()
        breaker = ledger.breaker(target)
        provider = target.provider
        if verdict.ok:
            if breaker.on_success(permit):
                ledger.stats(target).forget()  # back from an ejection: a fair trial, not its outage's figures
                engine.observer.breaker_changed(provider, target.key, "closed")
            if not late and call.route.learns:
                elapsed, stream = now - self.started, call.request.stream  # a stream's: its time to first event
                ledger.stats(target).succeeded(stream, elapsed, elapsed if stream else self.ttfb, now,
                                               call.route.adaptive.half_life_s)
        elif verdict.long_ejection or verdict.breaker_failure:
            # After the commit the elapsed time is the stream's length, not a latency: count the failure only.
            ledger.stats(target).failed(stream=call.request.stream, elapsed=0.0 if late else now - self.started,
                                        now=now, half_life_s=call.route.adaptive.half_life_s)
            if verdict.long_ejection:
                breaker.eject_for_max(now)
                opened = True
            else:
                opened = breaker.on_failure(permit, now)
            if opened and breaker.open_until is not None:
                ledger.ejected(target, breaker.open_until, now)
                engine.observer.breaker_changed(provider, target.key, "open")
        else:
            breaker.on_neutral(permit)
        progress = call.progress
        if not late:
            progress.attempts += 1
            progress.per_target[target.key] = progress.per_target.get(target.key, 0) + 1
            call.record.attempts = progress.attempts
        call.record.provider = provider
        progress.last = target
        progress.last_verdict = verdict
        reply = self._reply
        if reply is not None and not late:
            hint = read_limits(reply.headers)
            if hint is not None:
                self._limits_said(hint, now)
        if verdict.throttle:
            retry = call.route.retry
            delay = verdict.retry_after
            if delay is None:  # no usable header: back off, never retry at once
                delay = max(retry.base_interval_s, full_jitter(progress.per_target[target.key],
                                                               retry.base_interval_s, retry.max_interval_s,
                                                               engine.rng))
            ledger.throttle(provider, now + delay, now, cause="429")
            engine.observer.provider_throttled(provider)
        if verdict.action is Action.FAILOVER:
            progress.excluded.add(target.key)
        if verdict.long_ejection:
            progress.excluded.update(t.key for tier in call.tiers for t in tier if t.provider == provider)
        if verdict.exclude_model:
            progress.excluded_models.add(self.upstream_model)
        if not verdict.ok and not late:
            quota = ledger.provider(provider).quota
            if quota is not None:
                quota.adjust_tokens(-call.request.token_estimate)
        return now

    def _limits_said(self, hint: LimitHint, now: float) -> None:
        """A provider that says it has nothing left is throttled until its reset, before any 429."""
        call, provider = self.call, self.target.provider
        ledger = call.snapshot.ledger
        # This attempt is still counted in flight; the others will each take one of what is left.
        wait = throttle_for(hint, others_in_flight=ledger.provider_in_flight(provider) - 1,
                            tokens_needed=call.request.token_estimate)
        if wait is not None and wait > 0:
            ledger.throttle(provider, now + wait, now, cause="limit_header")
            self._engine.observer.limit_header_throttled(provider)

    def _start_span(self, request_span: RequestSpan) -> AttemptSpan:
        progress = self.call.progress
        kind = "first" if progress.attempts == 0 else "retry" if progress.last == self.target else "failover"
        previous = str(progress.last_verdict.reason) if progress.last_verdict is not None else None
        return request_span.attempt(provider=self.target.provider, model=self.upstream_model, kind=kind,
                                    previous=previous)

    def _report(self, outcome: str, now: float | None = None) -> None:
        engine = self._engine
        if self.span is not None:
            self.span.finish(outcome, status=self._reply.status if self._reply is not None else None,
                             ttfb_s=self.ttfb)
        if now is None:
            now = engine.clock.monotonic()
        engine.observer.attempt_finished(self.call.route.name, self.target.provider, outcome, now - self.started,
                                         self.ttfb)

    def _close(self) -> None:
        self._phase = _Phase.ENDED
        if self._reply is not None:
            self._reply.close()
        self.call.snapshot.ledger.end(self.target)
