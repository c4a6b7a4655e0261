"""What the daemon's handlers share: the router, the client keys, the metrics, the drain flag."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.observe.prometheus import PrometheusObserver
from router.router import Router
from router.server.auth import ClientKeys
from router.server.workers import WorkerInfo


@dataclass(slots=True)
class ServerContext:
    router: Router
    keys: ClientKeys
    # The metrics served at /metrics (build info and reloads included); normally also the router's observer.
    metrics: PrometheusObserver = field(default_factory=PrometheusObserver)
    draining: bool = False
    # Requests being handled, so shutdown can wait for them (main._drain); filled by chat.serve_chat and
    # app.guarded.
    in_flight: set[asyncio.Task[Any]] = field(default_factory=set)
    reloads: dict[str, int] = field(default_factory=lambda: {"success": 0, "failure": 0})
    worker: WorkerInfo | None = None  # set when this process is one of `serve --workers N`

    @property
    def registry(self) -> CollectorRegistry:
        return self.metrics.registry

    def count_reload(self, ok: bool) -> None:
        self.reloads["success" if ok else "failure"] += 1
        self.metrics.count_reload(ok)

    def render_metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST

    def adopt(self) -> None:
        """Refresh what derives from the policy (client keys) after a reload."""
        self.keys = ClientKeys(self.router.policy)


CONTEXT = web.AppKey("router_context", ServerContext)
