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

from router.health.backends import (
    EJECT,
    RECOVERED,
    RECOVERED_TTL_S,
    THROTTLE,
    HealthReport,
    MemoryBackend,
    StateBackend,
)
from router.health.breaker import Breaker
from router.health.quota import Quota, QuotaSpec, Rate
from router.health.retry_budget import RetryBudgetTracker
from router.health.target_stats import TargetStats
from router.health.view import DRAINED, READY, Availability, Status
from router.policy.model import Client, ClientLimits, HedgePolicy, Policy, Provider, ProviderLimits, RetryBudget, Target

# How far apart "ejected" and "found back" must be to tell their order across replicas.
_RECOVERY_SLACK_S = 0.01
# Hedges are budgeted over the route's requests of the last 10 s (the contract), with no floor.
HEDGE_WINDOW_S = 10.0


@dataclass(slots=True)
class ProviderState:
    limits: ProviderLimits
    quota: Quota | None
    throttled_until: float = float("-inf")
    throttle_cause: str = ""  # what set `throttled_until`: "429", "limit_header" or "peer"

    @classmethod
    def build(cls, name: str, provider: Provider, backend: StateBackend) -> ProviderState:
        lim = provider.limits
        spec = QuotaSpec(
            requests=Rate(lim.requests_per_minute, lim.requests_per_minute / 60.0)
            if lim.requests_per_minute else None,
            tokens=Rate(lim.tokens_per_minute, lim.tokens_per_minute / 60.0) if lim.tokens_per_minute else None)
        quota = backend.quota(f"provider:{name}", spec) if spec.requests or spec.tokens else None
        return cls(limits=lim, quota=quota)

    def throttle(self, until: float, cause: str = "429") -> None:
        # Keep the later of two throttles: a short Retry-After must not shorten a long one.
        if until > self.throttled_until:
            self.throttled_until = until
            self.throttle_cause = cause


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
    __slots__ = ("_breakers", "_clients", "_hedge_budgets", "_inflight", "_providers", "_stats", "_target_provider",
                 "backend", "budget", "drained")

    def __init__(self, policy: Policy, previous: Ledger | None = None,
                 backend: StateBackend | None = None) -> None:
        self.backend: StateBackend = backend or (previous.backend if previous else MemoryBackend())
        backend = self.backend
        self._providers: dict[str, ProviderState] = {}
        self._target_provider: dict[str, str] = {}
        self._breakers: dict[str, Breaker] = {}
        self._clients: dict[str, ClientState] = {}
        self._inflight: dict[str, int] = {}
        self._stats: dict[str, TargetStats] = {}
        self._hedge_budgets: dict[str, RetryBudgetTracker] = {}
        # Providers an operator drained (admin API): a reload keeps them drained.
        self.drained: set[str] = {name for name in previous.drained if name in policy.providers} \
            if previous is not None else set()
        old = previous
        for name, provider in policy.providers.items():
            kept = old._providers.get(name) if old else None
            self._providers[name] = kept if kept and kept.limits == provider.limits \
                else ProviderState.build(name, provider, backend)
        for route in policy.routes.values():
            for target in route.targets:
                self._target_provider[target.key] = target.provider
                provider = policy.providers[target.provider]
                breaker_policy, probed = provider.breaker, provider.health_probe is not None
                kept_breaker = old._breakers.get(target.key) if old else None
                if kept_breaker is not None and (kept_breaker.policy, kept_breaker.probed) == (breaker_policy, probed):
                    self._breakers[target.key] = kept_breaker
                elif target.key not in self._breakers:
                    self._breakers[target.key] = Breaker(breaker_policy, probed=probed)
                if target.key not in self._stats:
                    kept_stats = old._stats.get(target.key) if old else None
                    self._stats[target.key] = kept_stats or TargetStats()
            if route.hedge is not None:
                budget = _hedge_budget(route.hedge)
                kept_hedges = old._hedge_budgets.get(route.name) if old else None
                self._hedge_budgets[route.name] = kept_hedges if kept_hedges is not None \
                    and kept_hedges.policy == budget else RetryBudgetTracker(budget)
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

    def stats(self, target: Target) -> TargetStats:
        return self._stats[target.key]

    def latency_estimates(self) -> list[tuple[str, str, str, float]]:
        """(provider, target, "stream" | "json", seconds) of every target with an estimate (for metrics)."""
        rows = []
        for key, stats in list(self._stats.items()):
            provider = self._target_provider.get(key)
            for kind, stream in (("stream", True), ("json", False)):
                latency = stats.latency(stream=stream)
                if provider is not None and latency is not None:
                    rows.append((provider, key, kind, latency))
        return rows

    def hedge_budget(self, route: str) -> RetryBudgetTracker:
        return self._hedge_budgets[route]

    def provider_breakers(self, provider: str) -> list[tuple[str, Breaker]]:
        """(target key, breaker) of every target at `provider`."""
        return [(key, self._breakers[key]) for key, name in self._target_provider.items() if name == provider]

    # -- health shared with other replicas (no-ops with the memory backend) ---------------------
    def ejected(self, target: Target, until: float, now: float) -> None:
        """This replica ejected `target` until `until`: tell the others."""
        self.backend.publish(EJECT + target.key, until - now)

    def throttle(self, provider: str, until: float, now: float, cause: str = "429") -> None:
        self._providers[provider].throttle(until, cause)
        self.backend.publish(THROTTLE + provider, until - now)

    def adopt_health(self, report: HealthReport, now: float) -> list[tuple[str, str, str]]:
        """Apply what the fleet knows. Returns (provider, target, "open" | "closed") of the breakers
        this changed."""
        changed = []
        for field, seconds in report:
            if field.startswith(EJECT):
                key = field[len(EJECT):]
                breaker = self._breakers.get(key)
                if breaker is not None and breaker.adopt_ejection(now + seconds, now):
                    changed.append((self._target_provider[key], key, "open"))
            elif field.startswith(THROTTLE):
                provider = self._providers.get(field[len(THROTTLE):])
                if provider is not None:
                    provider.throttle(now + seconds, "peer")
            elif field.startswith(RECOVERED):
                name = field[len(RECOVERED):]
                # A replica's probe found it back at about this time (Redis counts in milliseconds, and the
                # report is a sync old): ejections learnt before then are over.
                found_back = now + seconds - RECOVERED_TTL_S + _RECOVERY_SLACK_S
                for key, breaker in self.provider_breakers(name):
                    if breaker.open_until is not None and breaker.last_failure <= found_back and breaker.recovered():
                        self._stats[key].forget()
                        changed.append((name, key, "closed"))
        return changed

    # -- the health prober (health/prober.py) -----------------------------------------------------
    def recovered(self, provider: str, now: float) -> list[tuple[str, str]]:
        """A probe found `provider` healthy: close its breakers, here and in the fleet. Returns
        (target, "closed") of the breakers this closed."""
        closed = []
        for key, breaker in self.provider_breakers(provider):
            if breaker.recovered():
                self._stats[key].forget()  # a fair trial, not its outage's figures
                closed.append((key, "closed"))
            self.backend.clear(EJECT + key)
        self.backend.publish(RECOVERED + provider, RECOVERED_TTL_S)
        return closed

    def probe_failed(self, provider: str, now: float) -> None:
        """A probe found `provider` still down: its open breakers stay open (and the fleet hears of it)."""
        for key, breaker in self.provider_breakers(provider):
            if breaker.open_until is not None:
                breaker.probe_failed(now)
                self.backend.publish(EJECT + key, max(0.0, breaker.open_until - now))

    def route_down_for(self, tiers: Iterable[Iterable[Target]], now: float) -> float | None:
        """Seconds until a target of `tiers` is admitted again if every target's breaker is open, else None."""
        until: list[float] = []
        for tier in tiers:
            for target in tier:
                breaker = self._breakers[target.key]
                if breaker.available(now) or breaker.open_until is None:
                    return None
                until.append(breaker.open_until)
        # At least a second: a probed breaker stays open past its ejection until its prober finds the
        # provider back, and "retry after 0 s" would only invite a busy loop.
        return max(min(until) - now, 1.0) if until else None

    # -- in-flight accounting (least_busy, adaptive, limit headers and the in-flight gauge) ----------
    def begin(self, target: Target) -> None:
        self._inflight[target.key] = self._inflight.get(target.key, 0) + 1

    def end(self, target: Target) -> None:
        self._inflight[target.key] = self._inflight.get(target.key, 1) - 1

    def provider_in_flight(self, provider: str) -> int:
        """Attempts to `provider` now, over all its targets (summed when asked: rarely, off the hot path)."""
        inflight = self._inflight
        return sum(inflight.get(key, 0) for key, name in self._target_provider.items() if name == provider)

    # -- TargetView ---------------------------------------------------------------------------
    def inflight(self, target: Target) -> int:
        return self._inflight.get(target.key, 0)

    def latency(self, target: Target, *, stream: bool) -> float | None:
        return self._stats[target.key].latency(stream=stream)

    def recent_failures(self, target: Target, now: float, half_life_s: float) -> float:
        return self._stats[target.key].recent_failures(now, half_life_s)

    def availability(self, target: Target, now: float, tokens: int) -> Availability:
        if self.drained and target.provider in self.drained:
            return DRAINED
        provider = self._providers[target.provider]
        breaker = self._breakers[target.key]
        if provider.throttled_until > now:
            # If its breaker stays open longer, waiting for the throttle alone would be wasted.
            open_until = breaker.open_until
            free_at = max(provider.throttled_until, open_until) if open_until is not None \
                else provider.throttled_until
            return Availability(Status.THROTTLED, free_at=free_at)
        if not breaker.available(now):
            return Availability(Status.OPEN, last_failure=breaker.last_failure, probed=breaker.probed)
        if provider.quota is not None:
            wait = provider.quota.wait_time(tokens)
            if wait > 0:
                return Availability(Status.QUOTA, free_at=now + wait)
        return READY


def _hedge_budget(hedge: HedgePolicy) -> RetryBudget:
    return RetryBudget(percent=hedge.max_percent, min_per_second=0.0, window_s=HEDGE_WINDOW_S)
