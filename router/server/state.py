"""The daemon's typed application state."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from router.router import Router
from router.server.auth import ClientKeys


def _build_info(registry: CollectorRegistry) -> None:
    from router._version import __version__

    info = Gauge("llm_router_build_info", "Build information (value is always 1).", ["version"],
                 registry=registry)
    info.labels(version=__version__).set(1)


@dataclass(slots=True)
class ServerState:
    router: Router
    keys: ClientKeys
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    draining: bool = False
    # Requests being handled, so shutdown can wait for them (main._drain); filled by app.track_in_flight.
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    _reload_counter: Counter | None = None

    def __post_init__(self) -> None:
        _build_info(self.registry)
        self._reload_counter = Counter("llm_router_config_reloads_total", "Policy reloads by result.",
                                       ["result"], registry=self.registry)

    def count_reload(self, ok: bool) -> None:
        result = "success" if ok else "failure"
        self.reloads[result] += 1
        if self._reload_counter is not None:
            self._reload_counter.labels(result=result).inc()

    def render_metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def adopt(self) -> None:
        """Refresh what derives from the policy (client keys) after a reload."""
        self.keys = ClientKeys(self.router.policy)


STATE = web.AppKey("router_state", ServerState)
