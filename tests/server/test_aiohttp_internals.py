"""The aiohttp surface router/server/aiohttp_internals.py relies on, pinned to the supported range.

When an aiohttp upgrade moves one of these, this file says which, by name; the behaviour
tests that depend on them (the fast front, `Expect: 100-continue`, the drain) would fail
further away and less clearly.
"""

from __future__ import annotations

import asyncio
import inspect
import re
import tomllib
from pathlib import Path

import aiohttp
from aiohttp import abc, web, web_protocol

from router.server import aiohttp_internals
from router.server.aiohttp_internals import SUPPORTED, ProtocolSite, SseResponse

ROOT = Path(__file__).resolve().parents[2]


def test_the_supported_range_is_pyprojects_and_the_installed_aiohttp_is_in_it() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in dependencies if re.match(r"aiohttp\b", d)]
    match = re.fullmatch(r"aiohttp>=(\d+)\.(\d+),<(\d+)", spec)
    assert match is not None, f"update SUPPORTED and this test for {spec!r}"
    low_major, low_minor, high_major = (int(group) for group in match.groups())
    assert ((low_major, low_minor), (high_major, 0)) == SUPPORTED, spec
    installed = tuple(int(part) for part in aiohttp.__version__.split(".")[:2])
    assert SUPPORTED[0] <= installed < SUPPORTED[1], aiohttp.__version__


def test_a_stream_response_can_defer_its_head_to_the_first_write() -> None:
    assert "_send_headers_immediately" in vars(web.StreamResponse)
    assert web.StreamResponse._send_headers_immediately is True  # aiohttp's default, which SseResponse turns off
    assert SseResponse._send_headers_immediately is False


def test_a_request_exposes_its_writer_with_a_resettable_output_size() -> None:
    assert isinstance(inspect.getattr_static(web.BaseRequest, "writer"), property)
    assert "output_size" in inspect.get_annotations(abc.AbstractStreamWriter) or \
        hasattr(abc.AbstractStreamWriter, "output_size")


def test_the_server_can_close_idle_connections_before_a_drain() -> None:
    assert callable(getattr(web.Server, "pre_shutdown", None))
    assert "pre_shutdown" in inspect.getsource(aiohttp_internals.close_idle_connections)


async def test_a_protocol_site_registers_with_the_runner_and_listens_on_its_own_protocol() -> None:
    served: list[bytes] = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            served.append(data)
            self.transport.close()  # type: ignore[attr-defined]

    class Site(ProtocolSite):
        def protocol(self) -> asyncio.Protocol:
            assert callable(self.fallback) and isinstance(self.app, web.Application)
            return Echo()

    runner = web.AppRunner(web.Application())
    await runner.setup()
    site = Site(runner, "127.0.0.1", 0)
    try:
        await site.start()
        assert site in runner.sites  # so runner.cleanup() stops it, as it does aiohttp's own sites
        server = site._server
        assert isinstance(server, asyncio.base_events.Server)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping")
        await writer.drain()
        assert await reader.read() == b""
        writer.close()
        assert served == [b"ping"]
    finally:
        await runner.cleanup()
    assert not server.is_serving()


def test_the_request_handler_counts_parsed_requests_and_answers_each_in_one_coroutine() -> None:
    # _WatchedHandler times a head from the moment every request parsed so far is answered.
    handler = web_protocol.RequestHandler
    assert "_request_count" in handler.__slots__
    assert "self._request_count += 1" in inspect.getsource(handler.data_received)
    assert inspect.iscoroutinefunction(handler._handle_request)
    assert list(inspect.signature(handler._handle_request).parameters) == [
        "self", "request", "start_time", "request_handler"]
    assert "self._handle_request(" in inspect.getsource(handler.start)


async def test_a_watched_handler_is_built_as_the_server_builds_its_own() -> None:
    runner = web.AppRunner(web.Application())
    await runner.setup()
    try:
        server = runner.server
        assert server is not None and hasattr(server, "_loop") and isinstance(server._kwargs, dict)
        protocol = aiohttp_internals.watched_handler_factory(runner, 1.0, lambda: None)()
        assert isinstance(protocol, web.RequestHandler) and protocol._request_count == 0
    finally:
        await runner.cleanup()
