"""`GET /admin/state`: one JSON snapshot of what the router knows now.

Built from the live policy snapshot (breakers, throttles, quotas, in-flight counts, drains, budgets),
the last minute of attempts (observe/recent.py) and the daemon's context (the policy file). It never
holds a secret: no keys, no key prefixes, no custom header values, no prompts; providers are shown by
name and base URL only.

Times are wall-clock ISO 8601 (UTC) for people, plus `*_in_s` (seconds from now) for scripts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from router.health.breaker import BreakerState
from router.health.bucket import Bucket
from router.health.ledger import Ledger
from router.health.quota import MemoryQuota
from router.health.retry_budget import RetryBudgetTracker
from router.health.view import Status
from router.policy.model import Policy
from router.server.context import ServerContext

_ERRING_S = 5.0  # a provider with an error this recent is amber (and green again once it has none)
# The provider's row colour on the status page and in `router status`: the worst of its targets.
_SEVERITY = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}


def snapshot(context: ServerContext) -> dict[str, Any]:
    router = context.router
    policy, ledger = router.policy, router.ledger
    now, wall = router.clock.monotonic(), time.time()

    def at(monotonic: float | None) -> tuple[str | None, float | None]:
        if monotonic is None or monotonic <= now or monotonic == float("inf"):
            return None, None
        seconds = monotonic - now
        return datetime.fromtimestamp(wall + seconds, UTC).isoformat(timespec="milliseconds"), round(seconds, 3)

    providers = {name: _provider(name, policy, ledger, context, now, at) for name in policy.providers}
    return {
        "generated_at": datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds"),
        "policy": {
            "path": policy.source,
            "sha256": context.policy_sha256,
            "loaded_at": datetime.fromtimestamp(context.policy_loaded_at, UTC).isoformat(timespec="seconds")
            if context.policy_loaded_at else None,
            "last_reload_error": context.last_reload_error,
        },
        "providers": providers,
        "routes": {name: _route(name, policy, ledger, now) for name in policy.routes},
        "clients": {client.name: _quota(ledger.client(client).quota) for client in policy.clients},
        "budgets": {
            "retry": _budget(ledger.budget, now),
            "hedge": {name: _budget(ledger.hedge_budget(name), now)
                      for name, route in policy.routes.items() if route.hedge is not None},
        },
        "state_backend": _backend(ledger, now),
        "draining": context.draining,
    }


def _provider(name: str, policy: Policy, ledger: Ledger, context: ServerContext, now: float,
              at: Any) -> dict[str, Any]:
    provider = policy.providers[name]
    state = ledger.provider(name)
    targets: dict[str, Any] = {}
    worst, ejected_until = BreakerState.CLOSED, None
    for key, breaker in ledger.provider_breakers(name):
        breaker_state = breaker.state(now)
        until, in_s = at(breaker.open_until)
        targets[key] = {"breaker": str(breaker_state), "ejected_until": until, "ejected_for_s": in_s}
        if _SEVERITY[breaker_state] > _SEVERITY[worst]:
            worst = breaker_state
        if breaker.open_until is not None and (ejected_until is None or breaker.open_until > ejected_until):
            ejected_until = breaker.open_until
    throttled_until, throttled_for = at(state.throttled_until)
    row: dict[str, Any] = {
        "base_url": provider.base_url,
        "breaker": str(worst),
        "ejected_until": at(ejected_until)[0],
        "throttled_until": throttled_until,
        "throttled_for_s": throttled_for,
        "throttle_cause": state.throttle_cause if throttled_until is not None else None,
        "in_flight": ledger.provider_in_flight(name),
        "drained": name in ledger.drained,
        "health_probe": provider.health_probe is not None,
        "targets": targets,
        "quota": _quota(state.quota),
    }
    recent = context.recent.activity(name) if context.recent is not None else None
    row["recent"] = None if recent is None else {
        "window_s": 60, "attempts": recent.attempts, "errors": recent.errors,
        "errors_per_s": round(recent.errors_per_s, 3),
        "ttfb_p50_s": recent.latency_p50_s, "ttfb_p99_s": recent.latency_p99_s,
        "last_error_s_ago": None if recent.last_error_age_s is None else round(recent.last_error_age_s, 3),
    }
    row["status"] = _status(row)
    return row


def _status(row: dict[str, Any]) -> str:
    """red: out of service (drained, ejected); amber: limited (throttled, half-open, an error in the last
    `_ERRING_S`); green."""
    if row["drained"] or row["breaker"] == "open":
        return "red"
    last_error = (row["recent"] or {}).get("last_error_s_ago")
    if row["throttled_until"] is not None or row["breaker"] == "half_open" or \
            (last_error is not None and last_error < _ERRING_S):
        return "amber"
    return "green"


def _route(name: str, policy: Policy, ledger: Ledger, now: float) -> dict[str, Any]:
    route = policy.routes[name]
    targets = []
    for target in route.targets:
        availability = ledger.availability(target, now, 0)
        latency = ledger.stats(target).latency(stream=False), ledger.stats(target).latency(stream=True)
        targets.append({
            "provider": target.provider, "model": target.model, "priority": target.priority, "weight": target.weight,
            "eligible": availability.status is Status.READY, "status": availability.status.value,
            "latency_json_s": latency[0], "latency_stream_s": latency[1],
        })
    return {"strategy": route.strategy, "hedge": route.hedge is not None, "targets": targets}


def _quota(quota: object) -> dict[str, Any] | None:
    if quota is None:
        return None
    if isinstance(quota, MemoryQuota):
        return {"requests": _bucket(quota.requests), "tokens": _bucket(quota.tokens)}
    return {"shared": True}  # in Redis: the levels live there


def _bucket(bucket: Bucket | None) -> dict[str, float] | None:
    if bucket is None:
        return None
    return {"available": round(bucket.available(), 3), "capacity": bucket.capacity}


def _budget(budget: RetryBudgetTracker, now: float) -> dict[str, Any]:
    requests, spent = budget.totals(now)
    policy = budget.policy
    allowance = requests * policy.percent / 100.0 + policy.min_per_second * policy.window_s
    return {"window_s": policy.window_s, "requests": requests, "spent": spent,
            "allowed": round(allowance, 2), "left": round(max(0.0, allowance - spent), 2)}


def _backend(ledger: Ledger, now: float) -> dict[str, Any]:
    backend = ledger.backend
    info: dict[str, Any] = {"backend": backend.name}
    if backend.name == "redis":
        info["up"] = bool(getattr(backend, "up", False))
        fleet = getattr(backend, "last_report", ())
        info["fleet"] = [{"field": field, "for_s": round(seconds, 3)} for field, seconds in fleet]
    return info
