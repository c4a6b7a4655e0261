"""Health and limit state shared by the requests of one router.

One `Ledger` per policy snapshot: breakers per target, throttles and quotas
per provider, quotas per client, in-flight counts. Nothing is global, so two
routers in one process share nothing. On reload, a new state adopts the entries
whose configuration did not change, so breakers and limiters survive. It is also
the planner's read-only view of target health.

Quotas come from the state backend (`backends.py`): in process, or in Redis for a
fleet. Breakers stay in process; ejections and throttles are published through the
backend, and what other replicas published is adopted by `adopt_health`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from router.health.backends import EJECT, THROTTLE, HealthReport, MemoryBackend, StateBackend
from router.health.breaker import Breaker
from router.health.quota import Quota, QuotaSpec, Rate
from router.health.retry_budget import RetryBudgetTracker
from router.health.view import READY, Availability, Status
from router.policy.model import Client, ClientLimits, Policy, Provider, ProviderLimits, Target


@dataclass(slots=True)
class ProviderState:
    limits: ProviderLimits
    quota: Quota | None
    throttled_until: float = float("-inf")

    @classmethod
    def build(cls, name: str, provider: Provider, backend: StateBackend) -> ProviderState:
        lim = provider.limits
        spec = QuotaSpec(
            requests=Rate(lim.requests_per_minute, lim.requests_per_minute / 60.0)
            if lim.requests_per_minute else None,
            tokens=Rate(lim.tokens_per_minute, lim.tokens_per_minute / 60.0) if lim.tokens_per_minute else None)
        quota = backend.quota(f"provider:{name}", spec) if spec.requests or spec.tokens else None
        return cls(limits=lim, quota=quota)

    def throttle(self, until: float) -> None:
        # Keep the later of two throttles: a short Retry-After must not shorten a long one.
        if until > self.throttled_until:
            self.throttled_until = until


@dataclass(slots=True)
class ClientState:
    limits: ClientLimits
    quota: Quota | None

    @classmethod
    def build(cls, name: str, limits: ClientLimits, backend: StateBackend) -> ClientState:
        requests = None
        if limits.requests_per_second:
            burst = limits.burst or max(1, round(limits.requests_per_second))
            requests = Rate(burst, limits.requests_per_second)
        tokens = Rate(limits.tokens_per_minute, limits.tokens_per_minute / 60.0) \
            if limits.tokens_per_minute else None
        quota = backend.quota(f"client:{name}", QuotaSpec(requests, tokens)) if requests or tokens else None
        return cls(limits=limits, quota=quota)


class Ledger:
    __slots__ = ("_breakers", "_clients", "_inflight", "_providers", "_target_provider", "backend", "budget")

    def __init__(self, policy: Policy, previous: Ledger | None = None,
                 backend: StateBackend | None = None) -> None:
        self.backend: StateBackend = backend or (previous.backend if previous else MemoryBackend())
        backend = self.backend
        self._providers: dict[str, ProviderState] = {}
        self._target_provider: dict[str, str] = {}
        self._breakers: dict[str, Breaker] = {}
        self._clients: dict[str, ClientState] = {}
        self._inflight: dict[str, int] = {}
        old = previous
        for name, provider in policy.providers.items():
            kept = old._providers.get(name) if old else None
            self._providers[name] = kept if kept and kept.limits == provider.limits \
                else ProviderState.build(name, provider, backend)
        for route in policy.routes.values():
            for target in route.targets:
                self._target_provider[target.key] = target.provider
                breaker_policy = policy.providers[target.provider].breaker
                kept_breaker = old._breakers.get(target.key) if old else None
                if kept_breaker is not None and kept_breaker.policy == breaker_policy:
                    self._breakers[target.key] = kept_breaker
                elif target.key not in self._breakers:
                    self._breakers[target.key] = Breaker(breaker_policy)
        for client in policy.clients:
            kept_client = old._clients.get(client.name) if old else None
            self._clients[client.name] = kept_client if kept_client and kept_client.limits == client.limits \
                else ClientState.build(client.name, client.limits, backend)
        if old is not None:
            self._inflight = old._inflight  # requests on the old snapshot still decrement it
        kept_budget = old.budget if old and old.budget.policy == policy.retry_budget else None
        self.budget = kept_budget or RetryBudgetTracker(policy.retry_budget)

    # -- accessors -------------------------------------------------------------------------
    def provider(self, name: str) -> ProviderState:
        return self._providers[name]

    def breaker(self, target: Target) -> Breaker:
        return self._breakers[target.key]

    def client(self, client: Client) -> ClientState:
        return self._clients[client.name]

    # -- health shared with other replicas (no-ops with the memory backend) ---------------------
    def ejected(self, target: Target, until: float, now: float) -> None:
        """This replica ejected `target` until `until`: tell the others."""
        self.backend.publish(EJECT + target.key, until - now)

    def throttle(self, provider: str, until: float, now: float) -> None:
        self._providers[provider].throttle(until)
        self.backend.publish(THROTTLE + provider, until - now)

    def adopt_health(self, report: HealthReport, now: float) -> list[tuple[str, str]]:
        """Apply what the fleet knows. Returns (provider, target) of breakers this opened."""
        opened = []
        for field, seconds in report:
            if field.startswith(EJECT):
                key = field[len(EJECT):]
                breaker = self._breakers.get(key)
                if breaker is not None and breaker.adopt_ejection(now + seconds, now):
                    opened.append((self._target_provider[key], key))
            elif field.startswith(THROTTLE):
                provider = self._providers.get(field[len(THROTTLE):])
                if provider is not None:
                    provider.throttle(now + seconds)
        return opened

    def route_down_for(self, tiers: Iterable[Iterable[Target]], now: float) -> float | None:
        """Seconds until a target of `tiers` is admitted again if every target's breaker is open, else None."""
        until: list[float] = []
        for tier in tiers:
            for target in tier:
                breaker = self._breakers[target.key]
                if breaker.available(now) or breaker.open_until is None:
                    return None
                until.append(breaker.open_until)
        return max(min(until) - now, 0.0) if until else None

    # -- in-flight accounting (least_busy and the in-flight gauge) -------------------------
    def begin(self, target: Target) -> None:
        self._inflight[target.key] = self._inflight.get(target.key, 0) + 1

    def end(self, target: Target) -> None:
        self._inflight[target.key] = self._inflight.get(target.key, 1) - 1

    # -- TargetView ---------------------------------------------------------------------------
    def inflight(self, target: Target) -> int:
        return self._inflight.get(target.key, 0)

    def availability(self, target: Target, now: float, tokens: int) -> Availability:
        provider = self._providers[target.provider]
        breaker = self._breakers[target.key]
        if provider.throttled_until > now:
            # If its breaker stays open longer, waiting for the throttle alone would be wasted.
            open_until = breaker.open_until
            free_at = max(provider.throttled_until, open_until) if open_until is not None \
                else provider.throttled_until
            return Availability(Status.THROTTLED, free_at=free_at)
        if not breaker.available(now):
            return Availability(Status.OPEN, last_failure=breaker.last_failure)
        if provider.quota is not None:
            wait = provider.quota.wait_time(tokens)
            if wait > 0:
                return Availability(Status.QUOTA, free_at=now + wait)
        return READY
