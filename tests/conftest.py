"""Shared fixtures (fixtures only: helpers live next to the tests that use them)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from router.mock import FakeProvider

FakeProviderFactory = Callable[..., Awaitable[FakeProvider]]


@pytest.fixture
async def fake_provider() -> AsyncIterator[FakeProviderFactory]:
    """Start fake providers on 127.0.0.1, port 0; all are stopped at teardown.

        aimo = await fake_provider("aimo")
        asi1 = await fake_provider("asi1", models=["asi1-mini"])

    Keyword arguments go to `FakeProvider`; `base_url` is set once started.
    """
    started: list[FakeProvider] = []

    async def start(name: str | None = None, **kwargs: Any) -> FakeProvider:
        provider = FakeProvider(name or f"fake{len(started) + 1}", **kwargs)
        await provider.start()
        started.append(provider)
        return provider

    yield start
    for provider in reversed(started):
        await provider.stop()
