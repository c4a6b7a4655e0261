"""The fast front (router.server.front): which requests it serves itself, which it hands to aiohttp,
and that either way the client gets the same answer, over raw sockets on loopback.

aiohttp's answers carry a `Server` header and the fast front's do not: that is how these tests
tell which front answered.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from router.mock import Ok
from router.server import front
from router.server.fast_exchange import FastExchange
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, chat_body, port_of, read_response, request_head, sse_data
from tests.support.daemon import InProcessDaemon
from tests.support.policies import simple_policy

BODY = json.dumps(chat_body("hello")).encode()
STREAM_BODY = json.dumps(chat_body("hello", stream=True)).encode()


def plain_request(server: InProcessDaemon, body: bytes = BODY, *extra: str) -> bytes:
    head = request_head(port_of(server), len(body))
    return head[:-2] + "".join(f"{line}\r\n" for line in extra).encode() + b"\r\n" + body


def by_front(headers: dict[str, str]) -> bool:
    return "server" not in headers


async def connect(server: InProcessDaemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port_of(server))


async def read_chunked(reader: asyncio.StreamReader) -> tuple[dict[str, str], bytes]:
    """One chunked answer: its headers and the body up to the terminating chunk."""
    async with asyncio.timeout(5):
        head = await reader.readuntil(b"\r\n\r\n")
        headers = dict(line.lower().split(": ", 1) for line in head.decode().split("\r\n")[1:] if ": " in line)
        assert headers.get("transfer-encoding") == "chunked", head
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n"))[:-2], 16)
            data = await reader.readexactly(size + 2)
            if size == 0:
                return headers, body
            body += data[:-2]


@pytest.fixture
async def server(daemon: DaemonFactory, fake_provider) -> InProcessDaemon:
    fake = await fake_provider("aimo")
    return await daemon(simple_policy(fake))


async def test_a_head_and_body_in_separate_writes_are_served_by_the_fast_front(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    request = plain_request(server)
    split = request.index(b"\r\n\r\n") + 4
    writer.write(request[:split])
    await writer.drain()
    writer.write(request[split:])
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 200, body
    assert by_front(headers) and headers["x-router-attempts"] == "1"
    assert json.loads(body)["choices"][0]["message"]["content"]


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    writer.write(b"".join(plain_request(server, BODY, f"X-Request-ID: pipelined-{n}") for n in range(3)))
    for n in range(3):
        status, headers, _ = await read_response(reader)
        assert (status, headers["x-request-id"]) == (200, f"pipelined-{n}")
        assert by_front(headers)
    writer.write(plain_request(server, BODY, "X-Request-ID: after"))  # the same connection, kept alive
    status, headers, _ = await read_response(reader)
    writer.close()
    assert (status, headers["x-request-id"]) == (200, "after")


async def test_a_stream_is_relayed_chunked_and_the_connection_kept(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    for _ in range(2):
        writer.write(plain_request(server, STREAM_BODY))
        headers, body = await read_chunked(reader)
        assert by_front(headers) and headers["content-type"] == "text/event-stream"
        assert sse_data(body)[-1] == "[DONE]"
    writer.close()


@pytest.mark.parametrize("extra", [("Transfer-Encoding: chunked",), ("Expect: 100-continue",)])
async def test_requests_the_fast_front_does_not_serve_are_answered_by_aiohttp_on_the_same_connection(
        server: InProcessDaemon, extra: tuple[str, ...]) -> None:
    reader, writer = await connect(server)
    if extra[0].startswith("Transfer-Encoding"):
        head = plain_request(server, b"")[:-2].replace(b"Content-Length: 0\r\n", b"") + extra[0].encode()
        writer.write(head + b"\r\n\r\n" + b"%x\r\n%b\r\n0\r\n\r\n" % (len(BODY), BODY))
    else:
        writer.write(plain_request(server, b"", *extra)[:-2].replace(b"Content-Length: 0", b"Content-Length: %d"
                                                                       % len(BODY)) + b"\r\n")
        assert b"100 Continue" in await reader.readuntil(b"\r\n\r\n")
        writer.write(BODY)
    status, headers, body = await read_response(reader)
    assert status == 200, body
    assert not by_front(headers)
    writer.write(plain_request(server))  # aiohttp keeps the connection it was handed
    status, headers, _ = await read_response(reader)
    writer.close()
    assert status == 200 and not by_front(headers)


async def test_other_routes_then_a_chat_request_on_one_connection(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    status, _, body = await read_response(reader)
    assert (status, json.loads(body)) == (200, {"status": "ok"})
    writer.write(plain_request(server))
    status, _, _ = await read_response(reader)
    writer.close()
    assert status == 200


async def test_a_request_still_incomplete_after_the_hand_off_time_is_served_by_aiohttp(
        server: InProcessDaemon, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(front, "HAND_OFF_S", 0.05)
    reader, writer = await connect(server)
    request = plain_request(server)
    writer.write(request[:-10])
    await writer.drain()
    await asyncio.sleep(0.3)  # past the (real) hand-off timer: aiohttp now holds the connection
    writer.write(request[-10:])
    status, headers, body = await read_response(reader)
    writer.close()
    assert status == 200, body
    assert not by_front(headers)


async def test_a_body_over_the_limit_gets_an_openai_413(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    limit = server.router.policy.server.max_body_bytes
    writer.write(request_head(port_of(server), limit + 1) + b" " * (limit + 1))
    status, _, body = await read_response(reader)
    writer.close()
    assert status == 413
    assert_openai_error(body, code="body_too_large")


async def test_connection_close_is_honoured(server: InProcessDaemon) -> None:
    reader, writer = await connect(server)
    writer.write(plain_request(server, BODY, "Connection: close"))
    status, headers, _ = await read_response(reader)
    assert status == 200 and headers["connection"] == "close" and by_front(headers)
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()


async def test_an_internal_error_mid_stream_cuts_the_answer_instead_of_ending_it(
        server: InProcessDaemon, monkeypatch: pytest.MonkeyPatch, http: aiohttp.ClientSession) -> None:
    original = FastExchange.write_event

    async def failing_write(self: FastExchange, data: bytes, *, last: bool = False) -> None:
        await original(self, data)  # the first piece goes out, without the stream's end
        raise RuntimeError("a bug in the relay")

    monkeypatch.setattr(FastExchange, "write_event", failing_write)
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(server.chat_url, data=STREAM_BODY) as response:
            assert response.status == 200
            await response.read()
    monkeypatch.undo()
    async with http.post(server.chat_url, data=BODY) as response:  # still serving
        assert response.status == 200


async def test_idle_keep_alive_connections_are_closed_after_the_idle_timeout(
        daemon: DaemonFactory, fake_provider, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"keepalive_s": 0.2}))
    reader, writer = await connect(server)
    writer.write(plain_request(server))
    status, _, _ = await read_response(reader)
    assert status == 200
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()


async def test_stopping_the_site_closes_idle_connections_and_lets_a_stream_finish(
        daemon: DaemonFactory, fake_provider) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Ok(content="one two three four", chunks=4, interval_s=0.1))
    server = await daemon(simple_policy(fake))
    idle_reader, idle_writer = await connect(server)
    idle_writer.write(plain_request(server))
    assert (await read_response(idle_reader))[0] == 200
    reader, writer = await connect(server)
    writer.write(plain_request(server, STREAM_BODY))
    await reader.readuntil(b"data:")  # the stream is under way
    site = next(s for s in server.runner.sites if isinstance(s, front.FrontSite))
    await site.stop()
    async with asyncio.timeout(2):
        assert await idle_reader.read() == b""  # idle: closed at once
        rest = await reader.read()  # busy: the stream runs to its end, then the connection closes
    assert rest.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    idle_writer.close()
    writer.close()
