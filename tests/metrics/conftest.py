"""The daemon as `router serve` builds it (a PrometheusObserver shared by the Router and the app),
in-process on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest
from aiohttp import web

from router.observe.prometheus import PrometheusObserver
from router.policy.model import Policy
from router.router import Router
from router.server import create_app
from router.server.front import FrontSite
from tests.metrics.helpers import Scrape


@dataclass(slots=True)
class MetricsDaemon:
    runner: web.AppRunner
    base_url: str
    observer: PrometheusObserver

    @property
    def chat_url(self) -> str:
        return f"{self.base_url}/v1/chat/completions"

    async def scrape(self, http: aiohttp.ClientSession) -> Scrape:
        async with http.get(f"{self.base_url}/metrics") as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return Scrape.parse(await response.text())


@pytest.fixture
async def metrics_daemon() -> AsyncIterator[Callable[[Policy], Awaitable[MetricsDaemon]]]:
    started: list[MetricsDaemon] = []

    async def start(policy: Policy) -> MetricsDaemon:
        observer = PrometheusObserver()
        app = create_app(Router(policy, observer=observer), observer=observer)
        runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            await FrontSite(runner, "127.0.0.1", 0).start()
        except BaseException:
            await runner.cleanup()
            raise
        host, port = runner.addresses[0][:2]
        handle = MetricsDaemon(runner, f"http://{host}:{port}", observer)
        started.append(handle)
        return handle

    try:
        yield start
    finally:
        for handle in reversed(started):
            await handle.runner.cleanup()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
