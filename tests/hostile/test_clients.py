"""Clients that send slowly, too much, or never read: the daemon's connection-level limits, the same on
the fast front and on aiohttp's side, over raw sockets on loopback."""

from __future__ import annotations

import asyncio
import json
import time
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest

from router.mock import Ok
from router.observe.prometheus import PrometheusObserver
from router.server import wire
from tests.metrics.helpers import Scrape
from tests.server.conftest import DaemonFactory
from tests.server.helpers import port_of, read_response
from tests.support.daemon import DaemonProcess, InProcessDaemon
from tests.support.policies import policy_text, provider_block, route_block, simple_policy

BODY = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "hi"}]}).encode()


def chat_head(port: int, length: int, *extra: str) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def connect(server: InProcessDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the daemon sends until it closes the connection, which it must do within `seconds`
    (b"" when it reset it, or our own writes found it gone)."""
    async with asyncio.timeout(seconds):
        try:
            return await reader.read()
        except ConnectionError:
            return b""


@pytest.fixture
async def server(daemon: DaemonFactory, fake_provider) -> InProcessDaemon:
    fake = await fake_provider("aimo")
    return await daemon(simple_policy(fake, server={"head_timeout_s": 0.5, "max_body_bytes": 4096}))


@pytest.mark.parametrize("extra", [
    (),  # the fast front's
    ("Expect: 100-continue",),  # aiohttp's: no 100 Continue for a body that will be refused
    ("Proxy-Connection: keep-alive",),  # aiohttp's
])
async def test_a_declared_body_over_the_limit_is_refused_at_once_not_after_a_read_timeout(
        server: InProcessDaemon, extra: tuple[str, ...]) -> None:
    # It used to wait for the body: a 408 after 30 s instead of a 413 (on aiohttp's side until a re-probe).
    reader, writer = await connect(server)
    started = time.monotonic()
    writer.write(chat_head(port_of(server), 100_000, *extra))
    status, headers, body = await read_response(reader, within_s=2.0)
    assert status == 413 and time.monotonic() - started < 1.0
    assert headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "body_too_large"
    writer.write(b"x" * 50_000)  # the client sends (some of) its body anyway, then stops sending:
    writer.write_eof()  # the daemon reads and drops it, then closes (without the EOF: after a lingering time)
    assert await closed_within(reader, 1.5) == b""
    writer.close()


@pytest.mark.parametrize("start", [
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n",  # the fast front's own request, never finished
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Slow: ",  # aiohttp's (handed over at once)
    b"",  # nothing at all after connecting
])
async def test_a_head_that_is_not_complete_within_head_timeout_s_ends_the_connection(
        server: InProcessDaemon, start: bytes) -> None:
    reader, writer = await connect(server)
    started = time.monotonic()
    writer.write(start)
    for _ in range(20 if start else 0):  # a slowloris: a byte now and then, never the end of the head
        await asyncio.sleep(0.05)
        try:
            writer.write(b"a")
        except ConnectionError:
            break  # closed already
    rest = await closed_within(reader, 3.0)
    assert 0.4 < time.monotonic() - started < 2.5
    # Both paths say why (aiohttp's used to close without a word).
    assert rest.startswith(b"HTTP/1.1 408 ") and b'"head_timeout"' in rest
    writer.close()


async def test_a_head_handed_to_aiohttp_half_way_keeps_the_time_it_began(daemon: DaemonFactory, fake_provider) -> None:
    # The fast front holds a head that may become its own, then hands it to aiohttp when a field says it
    # will not (here `Expect`). aiohttp's side used to start the head timeout again from the hand-off:
    # up to twice head_timeout_s in all.
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"head_timeout_s": 1.0}))
    reader, writer = await connect(server)
    started = time.monotonic()
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.8)
    writer.write(b"Expect: 100-continue\r\n")  # handed over now; the head never ends
    rest = await closed_within(reader, 3.0)
    assert rest.startswith(b"HTTP/1.1 408 ")
    assert time.monotonic() - started < 1.5  # not 1.8
    writer.close()


async def test_the_head_of_a_later_request_on_a_kept_alive_connection_has_the_same_limit(
        server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    writer.write(chat_head(port_of(server), len(BODY)) + BODY)
    status, _, _ = await read_response(reader)
    assert status == 200
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and then nothing more
    assert (await closed_within(reader, 3.0)).startswith(b"HTTP/1.1 408 ")
    writer.close()


@pytest.mark.slow
async def test_a_head_begun_right_after_an_answer_on_aiohttps_side_has_the_same_limit(tmp_path: Path) -> None:
    # A byte sent as soon as aiohttp's answer arrived can reach the daemon before aiohttp waits for the
    # next request. The head timer used to start only while aiohttp waited, so such a head was timed by
    # keepalive_s alone (30 s here). A separate process, so that the daemon's loop is not the test's.
    text = policy_text({"p": provider_block("http://127.0.0.1:9", keyed=False)}, {"chat": route_block(("p", "m"))},
                       server={"head_timeout_s": 0.5, "keepalive_s": 30})
    async with DaemonProcess(text, tmp_path) as daemon:
        for _ in range(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", daemon.port)
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, _ = await read_response(reader)
            writer.write(b"G")  # at once, and then nothing more
            started = time.monotonic()
            rest = await closed_within(reader, 5.0)
            assert status == 200 and time.monotonic() - started < 2.5
            assert rest.startswith(b"HTTP/1.1 408 ")
            writer.close()


async def test_a_stream_answer_says_connection_close_when_the_client_asked_for_it(
        daemon: DaemonFactory, fake_provider) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Ok(chunks=3))
    server = await daemon(simple_policy(fake))
    reader, writer = await connect(server)
    body = json.dumps({"model": "chat", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    writer.write(chat_head(port_of(server), len(body), "Connection: close") + body)
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
    assert b"\r\nConnection: close\r\n" in head and b"text/event-stream" in head
    assert (await closed_within(reader, 3.0)).endswith(b"0\r\n\r\n")
    writer.close()


async def test_max_connections_refuses_one_more_with_a_503_and_counts_handed_over_ones_too(
        daemon: DaemonFactory, fake_provider) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"max_connections": 4, "head_timeout_s": 30}))
    held = [await connect(server) for _ in range(2)]
    for reader, writer in held[:1]:  # one handed to aiohttp, one still on the fast front
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_response(reader))[0] == 200
    held += [await connect(server) for _ in range(2)]
    await asyncio.sleep(0.05)
    reader, writer = await connect(server)
    status, headers, body = await read_response(reader, within_s=2.0)
    assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
    assert json.loads(body)["error"]["code"] == "too_many_connections"
    writer.close()
    _, held_writer = held.pop()
    held_writer.close()
    await held_writer.wait_closed()
    await asyncio.sleep(0.05)
    reader, writer = await connect(server)  # a place came free
    writer.write(chat_head(port_of(server), len(BODY)) + BODY)
    assert (await read_response(reader))[0] == 200
    writer.close()
    for _, held_writer in held:
        held_writer.close()


async def test_an_idle_keep_alive_connection_on_aiohttps_side_is_closed_after_keepalive_s(
        daemon: DaemonFactory, fake_provider) -> None:
    # (The fast front's own: tests/server/test_front.py.) aiohttp's default is 75 s, whatever the policy said.
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"keepalive_s": 0.5}))
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (await read_response(reader))[0] == 200
    started = time.monotonic()
    assert await closed_within(reader, 5.0) == b""  # closed without a word: nothing was asked
    assert time.monotonic() - started > 0.4
    writer.close()


async def test_a_connection_handed_to_aiohttp_frees_its_place_when_it_ends(
        daemon: DaemonFactory, fake_provider) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"max_connections": 2}))
    for _ in range(6):  # three times the limit, one after another: each place comes free again
        reader, writer = await connect(server)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await closed_within(reader, 3.0)).startswith(b"HTTP/1.1 200 ")
        writer.close()
        await writer.wait_closed()


async def test_an_answer_that_cannot_be_rendered_is_an_internal_error_in_the_log_and_the_metrics(
        daemon: DaemonFactory, fake_provider, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    # It used to be a canned 500 (with the Date of the process's start) while the access log and the
    # metrics recorded a 200 success.
    fake = await fake_provider("aimo")
    observer = PrometheusObserver()
    server = await daemon(simple_policy(fake), observer=observer)
    real = wire.answer_head

    def refuse_the_200(status: int, headers: object, **kwargs: object) -> bytes:
        if status == 200:
            raise ValueError("a header value holds a line break")
        return real(status, headers, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(wire, "answer_head", refuse_the_200)
    reader, writer = await connect(server)
    writer.write(chat_head(port_of(server), len(BODY)) + BODY)
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 500 and json.loads(body)["error"]["code"] == "internal_error"
    assert abs(parsedate_to_datetime(headers["date"]).timestamp() - time.time()) < 5
    lines = [json.loads(record.getMessage()) for record in caplog.records if record.name == "router.access"]
    assert [(line["status"], line["outcome"]) for line in lines] == [(500, "internal_error")]
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_requests_total", route="chat", client="-", outcome="internal_error") == 1
    assert scrape.get("llm_router_requests_total", route="chat", client="-", outcome="success") == 0
