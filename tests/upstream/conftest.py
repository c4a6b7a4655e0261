"""Fixtures of the upstream tests: HttpTransports closed after the test, scripted servers stopped."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from router.policy.model import Provider
from router.upstream.transport import HttpTransport
from tests.support.wire_server import Handler, ScriptedServer

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


ServerFactory = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
async def serve() -> AsyncIterator[ServerFactory]:
    started: list[ScriptedServer] = []

    async def start(handler: Handler, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> ScriptedServer:
        server = ScriptedServer(handler)
        await server.start(host, tls)
        started.append(server)
        return server

    yield start
    for server in started:
        await server.close()
