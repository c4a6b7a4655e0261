"""What each provider did in the last minute, for the admin state (server/admin_state.py).

Prometheus answers "how has it been" over any range; an operator paged at night also wants "how is it
now" in one place, without a query: the last minute's attempts of each provider, their latency
percentiles and error classes. `RecentActivity` keeps that in fixed memory (the last `_KEEP` attempts
of each provider); `Tee` hands every observer hook to two observers, so the daemon feeds it next to
its Prometheus exporter. Only the daemon with an admin listener pays for it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from router.clock import Clock
from router.observe.observer import NullObserver, Observer

WINDOW_S = 60.0
_KEEP = 2048  # attempts kept per provider: a minute at ~34/s, and a bounded amount of memory at any rate


@dataclass(frozen=True, slots=True)
class ProviderActivity:
    attempts: int
    errors: dict[str, int]  # outcome -> count, successes and cancellations left out
    latency_p50_s: float | None  # time to first byte of the attempts that got one
    latency_p99_s: float | None
    errors_per_s: float
    last_error_age_s: float | None  # seconds since its latest error in the window


class RecentActivity(NullObserver):
    __slots__ = ("_attempts", "_clock")

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        # provider -> (monotonic time, outcome, ttfb or None)
        self._attempts: dict[str, deque[tuple[float, str, float | None]]] = {}

    def attempt_finished(self, route: str, provider: str, outcome: str, duration_s: float,
                         ttfb_s: float | None) -> None:
        recent = self._attempts.get(provider)
        if recent is None:
            recent = self._attempts[provider] = deque(maxlen=_KEEP)
        recent.append((self._clock.monotonic(), outcome, ttfb_s))

    def activity(self, provider: str) -> ProviderActivity:
        since = self._clock.monotonic() - WINDOW_S
        window = [entry for entry in self._attempts.get(provider, ()) if entry[0] >= since]
        errors: dict[str, int] = {}
        last_error = None
        for at, outcome, _ in window:
            if outcome not in ("ok", "cancelled"):
                errors[outcome] = errors.get(outcome, 0) + 1
                last_error = at
        ttfbs = sorted(ttfb for _, _, ttfb in window if ttfb is not None)
        return ProviderActivity(attempts=len(window), errors=errors, latency_p50_s=_quantile(ttfbs, 0.5),
                                latency_p99_s=_quantile(ttfbs, 0.99),
                                errors_per_s=sum(errors.values()) / WINDOW_S,
                                last_error_age_s=None if last_error is None else since + WINDOW_S - last_error)


def _quantile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


class Tee:
    """An `Observer` that hands every hook to `first`, then to `second`."""

    def __init__(self, first: Observer, second: Observer) -> None:
        self._pair = (first, second)

    def __getattr__(self, name: str) -> Callable[..., None]:
        first, second = (getattr(observer, name) for observer in self._pair)

        def both(*args: Any, **kwargs: Any) -> None:
            first(*args, **kwargs)
            second(*args, **kwargs)

        setattr(self, name, both)  # looked up once per hook name
        return both

    def watch_target_latencies(self, source: Callable[[], Iterable[tuple[str, str, str, float]]]) -> None:
        for observer in self._pair:
            observer.watch_target_latencies(source)
