"""Health and limit state shared by the requests of one router (in memory).

One `RouterState` per router: breakers per target, throttles and quota buckets
per provider, limit buckets per client, in-flight counts. Nothing is global, so
two routers in one process share nothing. On reload, a new state adopts the
entries whose configuration did not change, so breakers and limiters survive.
It is also the planner's read-only view of target health.

The Redis backend (shared across replicas) will implement the same surface.
"""

from __future__ import annotations

from dataclasses import dataclass

from router.breaker import Breaker
from router.budget import RetryBudgetTracker
from router.limits import Bucket
from router.planner import READY, Availability, Status
from router.policy.model import Client, ClientLimits, Policy, Provider, ProviderLimits, Target


@dataclass(slots=True)
class ProviderState:
    limits: ProviderLimits
    requests: Bucket | None
    tokens: Bucket | None
    throttled_until: float = float("-inf")

    @classmethod
    def build(cls, provider: Provider) -> ProviderState:
        lim = provider.limits
        requests = Bucket(lim.requests_per_minute, lim.requests_per_minute / 60.0) \
            if lim.requests_per_minute else None
        tokens = Bucket(lim.tokens_per_minute, lim.tokens_per_minute / 60.0) if lim.tokens_per_minute else None
        return cls(limits=lim, requests=requests, tokens=tokens)

    def quota_wait(self, tokens: int) -> float:
        wait = self.requests.wait_time(1) if self.requests is not None else 0.0
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_time(tokens))
        return wait

    def throttle(self, until: float) -> None:
        # Keep the later of two throttles: a short Retry-After must not shorten a long one.
        if until > self.throttled_until:
            self.throttled_until = until


@dataclass(slots=True)
class ClientState:
    limits: ClientLimits
    requests: Bucket | None
    tokens: Bucket | None

    @classmethod
    def build(cls, limits: ClientLimits) -> ClientState:
        requests = None
        if limits.requests_per_second:
            burst = limits.burst or max(1, round(limits.requests_per_second))
            requests = Bucket(burst, limits.requests_per_second)
        tokens = Bucket(limits.tokens_per_minute, limits.tokens_per_minute / 60.0) \
            if limits.tokens_per_minute else None
        return cls(limits=limits, requests=requests, tokens=tokens)


class RouterState:
    __slots__ = ("_breakers", "_clients", "_inflight", "_providers", "budget")

    def __init__(self, policy: Policy, previous: RouterState | None = None) -> None:
        self._providers: dict[str, ProviderState] = {}
        self._breakers: dict[str, Breaker] = {}
        self._clients: dict[str, ClientState] = {}
        self._inflight: dict[str, int] = {}
        old = previous
        for name, provider in policy.providers.items():
            kept = old._providers.get(name) if old else None
            self._providers[name] = kept if kept and kept.limits == provider.limits \
                else ProviderState.build(provider)
        for route in policy.routes.values():
            for target in route.targets:
                breaker_policy = policy.providers[target.provider].breaker
                kept_breaker = old._breakers.get(target.key) if old else None
                if kept_breaker is not None and kept_breaker.policy == breaker_policy:
                    self._breakers[target.key] = kept_breaker
                elif target.key not in self._breakers:
                    self._breakers[target.key] = Breaker(breaker_policy)
        for client in policy.clients:
            kept_client = old._clients.get(client.name) if old else None
            self._clients[client.name] = kept_client if kept_client and kept_client.limits == client.limits \
                else ClientState.build(client.limits)
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
        if provider.requests is not None or provider.tokens is not None:
            wait = provider.quota_wait(tokens)
            if wait > 0:
                return Availability(Status.QUOTA, free_at=now + wait)
        return READY
