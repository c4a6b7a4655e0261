"""What the daemon's handlers share: the router, the client keys, the metrics, the drain flag."""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from router.observe.prometheus import PrometheusObserver
from router.observe.recent import RecentActivity
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
    # The policy file as last loaded (the admin state shows it): its sha256, when (wall clock), and why the
    # last reload was refused, if it was.
    policy_sha256: str = ""
    policy_loaded_at: float = 0.0
    last_reload_error: str | None = None
    recent: RecentActivity | None = None  # the last minute per provider, when the admin listener is on

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

    def loaded(self, path: str, error: str | None = None) -> None:
        """Record a load of the policy file at `path` (or why a reload was refused)."""
        self.last_reload_error = error
        if error is None:
            try:
                self.policy_sha256 = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                self.policy_sha256 = ""
            self.policy_loaded_at = time.time()


CONTEXT = web.AppKey("router_context", ServerContext)
