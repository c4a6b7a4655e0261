"""Shared by both transport test files: HttpTransports built by a test are closed after it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest

from router.policy.model import Provider
from router.upstream.transport import HttpTransport

TransportFactory = Callable[..., HttpTransport]


@pytest.fixture
async def make_transport() -> AsyncIterator[TransportFactory]:
    made: list[HttpTransport] = []

    def make(*providers: Provider) -> HttpTransport:
        transport = HttpTransport({p.name: p for p in providers})
        made.append(transport)
        return transport

    yield make
    for transport in made:
        await transport.aclose()
