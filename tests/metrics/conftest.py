"""The daemon as `router serve` builds it (a PrometheusObserver shared by the Router and the app),
in the test's event loop (tests/support/daemon.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from router.observe.prometheus import PrometheusObserver
from router.policy.model import Policy
from tests.metrics.helpers import Scrape
from tests.support.daemon import InProcessDaemon, start_in_process


@dataclass(slots=True)
class MetricsDaemon:
    daemon: InProcessDaemon
    observer: PrometheusObserver

    @property
    def chat_url(self) -> str:
        return self.daemon.chat_url

    async def scrape(self, http: aiohttp.ClientSession) -> Scrape:
        async with http.get(self.daemon.url("/metrics")) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            return Scrape.parse(await response.text())


@pytest.fixture
async def metrics_daemon() -> AsyncIterator[Callable[[Policy], Awaitable[MetricsDaemon]]]:
    started: list[InProcessDaemon] = []

    async def start(policy: Policy) -> MetricsDaemon:
        observer = PrometheusObserver()
        daemon = await start_in_process(policy, observer=observer)
        started.append(daemon)
        return MetricsDaemon(daemon, observer)

    try:
        yield start
    finally:
        for daemon in reversed(started):
            await daemon.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session
