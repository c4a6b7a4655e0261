"""HttpTransport with the default `http_client: fast` (router/upstream/http1/), against real loopback servers.

Most servers here are a `ScriptedServer`: it reads each request (head and Content-Length body) and
answers with exactly the bytes a test scripts, written piece by piece so that framing edge cases
reach the client split where the test says. A few tests use an aiohttp web server instead.
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import json
import socket
import ssl
import subprocess
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import MappingProxyType

import pytest
from aiohttp import web

from router._version import __version__
from router.engine.classify import Reason, classify_exception
from router.policy.model import Provider, Timeouts
from router.upstream import fast_client, http1
from router.upstream.errors import (
    BodyCut,
    ConnectFailed,
    ConnectionLost,
    FirstByteTimeout,
    IdleTimeout,
    TransportError,
)
from router.upstream.http1 import connection as http1_connection
from router.upstream.http1 import response as http1_response
from router.upstream.sse import SseRun
from router.upstream.transport import HttpTransport, Outgoing, _HttpReply
from tests.support.wire_server import (
    COMPLETION,
    LAST_CHUNK,
    Peer,
    Request,
    ScriptedServer,
    answer,
    chunk,
    chunked_head,
    dribble,
    reset,
    response,
    silent,
)
from tests.upstream.conftest import ServerFactory, TransportFactory

KEY = "sk-aimo-secret-0123456789"
BODY = b'{"model":"8W7X:deepseek-chat-v3",  "messages":[{"role":"user","content":"caf\\u00e9"}],"temperature":0.70}'
# The most a selector transport reads in one go (asyncio's _SelectorSocketTransport.max_size).
READ_SIZE = 256 * 1024


# --- the router's side ------------------------------------------------------------------------------

def provider(base_url: str, *, name: str = "aimo", api_key: str | None = KEY, headers: dict[str, str] | None = None,
             timeouts: Timeouts | None = None, max_connections: int = 100) -> Provider:
    prov = Provider(name, base_url, api_key_env="AIMO_API_KEY", api_key=api_key,
                    headers=MappingProxyType(headers or {}), timeouts=timeouts or Timeouts(),
                    max_connections=max_connections)
    assert prov.http_client == "fast"  # the default, which this file is about
    return prov


def outgoing(prov: Provider, body: bytes = BODY, *, stream: bool = False, request_id: str = "req-1",
             deadline_in: float = 120.0) -> Outgoing:
    return Outgoing(provider=prov, body=body, request_id=request_id, stream=stream,
                    deadline=time.monotonic() + deadline_in)


def response_of(reply: _HttpReply) -> http1.Response:
    response = reply._response
    assert isinstance(response, http1.Response)
    return response


def connection_of(reply: _HttpReply) -> http1.Connection:
    return response_of(reply)._connection


async def eventually(condition: Callable[[], bool], within: float = 1.0) -> None:
    """Poll for a state that no event announces (a closed or paused connection)."""
    for _ in range(int(within / 0.002)):
        if condition():
            return
        await asyncio.sleep(0.002)
    raise AssertionError(f"not true within {within}s")


async def events_of(reply: _HttpReply) -> list[str]:
    return [event.data async for event in reply.events()]


@pytest.fixture
async def aiohttp_server() -> AsyncIterator[Callable[[web.Application], Awaitable[str]]]:
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        return f"http://127.0.0.1:{port}/api/v1"

    yield start
    for runner in runners:
        await runner.cleanup()


def _can_bind(host: str) -> bool:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
            sock.bind((host, 0))
    except OSError:
        return False
    return True


LOOPBACK = "::1" if _can_bind("::1") else "127.0.0.1"


# --- 1. what goes on the wire -------------------------------------------------------------------------

async def test_request_line_and_headers_are_exactly_the_providers(serve: ServerFactory,
                                                                  make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url, headers={"HTTP-Referer": "https://example.com", "X-Title": "router"})
    reply = await make_transport(prov).send(outgoing(prov, request_id="abc-123"))
    assert await reply.read() == COMPLETION
    request = server.requests[0]
    assert request.line == "POST /api/v1/chat/completions HTTP/1.1"
    assert request.header("Host") == f"127.0.0.1:{server.port}"
    assert request.header("Content-Type") == "application/json"
    assert request.header("User-Agent") == f"llm-router/{__version__}"
    assert request.header("Authorization") == f"Bearer {KEY}"
    assert request.header("HTTP-Referer") == "https://example.com"
    assert request.header("X-Title") == "router"
    assert request.header("X-Request-ID") == "abc-123"
    assert request.header("Accept") == "*/*"
    assert request.header("Accept-Encoding") == "gzip, deflate"
    assert request.header("Content-Length") == str(len(BODY))
    names = [name for name, _ in request.headers]
    assert sorted(names) == sorted(["Host", "Content-Type", "User-Agent", "Authorization", "HTTP-Referer", "X-Title",
                                    "X-Request-ID", "Accept", "Accept-Encoding", "Content-Length"])
    assert request.body == BODY


async def test_host_header_of_an_ipv6_or_loopback_provider(serve: ServerFactory,
                                                           make_transport: TransportFactory) -> None:
    server = await serve(answer(response()), host=LOOPBACK)
    prov = provider(server.base_url)
    await (await make_transport(prov).send(outgoing(prov))).read()
    expected = f"[{LOOPBACK}]:{server.port}" if ":" in LOOPBACK else f"{LOOPBACK}:{server.port}"
    assert server.requests[0].header("Host") == expected


async def test_provider_without_a_key_sends_no_authorization(serve: ServerFactory,
                                                             make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url, api_key=None)
    await (await make_transport(prov).send(outgoing(prov))).read()
    assert "authorization" not in {name.lower() for name, _ in server.requests[0].headers}


async def test_stream_requests_accept_event_streams(serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(chunked_head(), chunk(b"data: [DONE]\n\n"), LAST_CHUNK))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    assert await events_of(reply) == ["[DONE]"]
    assert server.requests[0].header("Accept") == "text/event-stream"


@pytest.mark.parametrize("size", [0, 1000, http1_connection.JOIN_LIMIT, http1_connection.JOIN_LIMIT + 1, 1 << 20])
async def test_body_bytes_arrive_unchanged_whatever_their_size(size: int, serve: ServerFactory,
                                                               make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    await (await make_transport(prov).send(outgoing(prov, body))).read()
    assert server.requests[0].header("Content-Length") == str(size)
    assert server.requests[0].body == body


async def test_reconfigured_key_is_sent_on_the_same_warm_connection(serve: ServerFactory,
                                                                    make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    await (await transport.send(outgoing(prov))).read()
    rotated = provider(server.base_url, api_key="sk-rotated-0123456789")
    transport.configure({"aimo": rotated})
    await (await transport.send(outgoing(rotated))).read()
    assert [r.header("Authorization") for r in server.requests] == [f"Bearer {KEY}", "Bearer sk-rotated-0123456789"]
    assert len(server.peers) == 1


# --- 2. responses -------------------------------------------------------------------------------------

async def test_content_length_body_status_and_case_insensitive_headers(serve: ServerFactory,
                                                                       make_transport: TransportFactory) -> None:
    raw = response(COMPLETION, "200 OK", "X-RateLimit-Remaining-Requests: 7")
    server = await serve(answer(raw[:10], raw[10:50], raw[50:]))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 200
    assert reply.headers["x-ratelimit-remaining-requests"] == "7"
    assert await reply.read() == COMPLETION


async def test_chunked_body_split_everywhere_including_inside_a_size_line(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = json.dumps({"text": "x" * 300}).encode()
    size_line = b"%x\r\n" % 200
    head = chunked_head()
    pieces = [head[:9], head[9:30], head[30:], size_line[:1], size_line[1:2], size_line[2:], payload[:150],
              payload[150:200] + b"\r", b"\n" + chunk(payload[200:])[:2], chunk(payload[200:])[2:], LAST_CHUNK[:3],
              LAST_CHUNK[3:]]
    wire = b"".join(pieces)
    received: list[bytes] = []
    original = http1.Connection.data_received

    def spy(self: http1.Connection, data: bytes) -> None:
        received.append(data)
        original(self, data)

    monkeypatch.setattr(http1.Connection, "data_received", spy)
    server = await serve(answer(*pieces))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov))
    assert await reply.read() == payload
    assert b"".join(received) == wire
    assert len(received) > len(pieces) // 2  # the pieces really arrived apart,
    assert not any(size_line in data for data in received)  # and the parser never saw the size line whole


async def test_body_delimited_by_connection_close(serve: ServerFactory, make_transport: TransportFactory) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"
    server = await serve(answer(head, COMPLETION[:5], COMPLETION[5:], close=True))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov))
    assert await reply.read() == COMPLETION


async def test_error_status_is_a_reply_with_its_body(serve: ServerFactory, make_transport: TransportFactory) -> None:
    error = b'{"error": {"message": "slow down"}}'
    server = await serve(answer(response(error, "429 Too Many Requests", "Retry-After: 3")))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 429
    assert reply.headers["retry-after"] == "3"
    assert await reply.read() == error


async def test_redirect_is_returned_not_followed(serve: ServerFactory, make_transport: TransportFactory) -> None:
    elsewhere = await serve(answer(response()))
    server = await serve(answer(response(b"", "302 Found", f"Location: {elsewhere.base_url}/chat/completions")))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov))
    assert reply.status == 302
    assert reply.headers["location"] == f"{elsewhere.base_url}/chat/completions"
    assert await reply.read() == b""
    assert elsewhere.peers == []


async def test_interim_100_and_103_answers_are_skipped(serve: ServerFactory,
                                                       make_transport: TransportFactory) -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    server = await serve(answer(interim[:20], interim[20:], response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov))
    assert reply.status == 200
    assert "link" not in reply.headers
    assert await reply.read() == COMPLETION
    await (await transport.send(outgoing(prov))).read()  # and the connection is still usable
    assert len(server.peers) == 1


@pytest.mark.parametrize(("encoding", "compress"), [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
])
async def test_compressed_bodies_are_decoded(encoding: str, compress: Callable[[bytes], bytes], serve: ServerFactory,
                                             make_transport: TransportFactory) -> None:
    packed = compress(COMPLETION * 50)
    raw = response(packed, "200 OK", f"Content-Encoding: {encoding}")
    server = await serve(answer(raw[:100], raw[100:]))
    prov = provider(server.base_url)
    assert await (await make_transport(prov).send(outgoing(prov))).read() == COMPLETION * 50


async def test_compressed_stream_from_aiohttp_is_decoded_event_by_event(
        aiohttp_server: Callable[[web.Application], Awaitable[str]], make_transport: TransportFactory) -> None:
    events = [json.dumps({"choices": [{"delta": {"content": f"token {i}"}}]}) for i in range(20)]

    async def chat(request: web.Request) -> web.StreamResponse:
        stream = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        stream.enable_compression(web.ContentCoding.gzip)
        await stream.prepare(request)
        for data in events:
            await stream.write(f"data: {data}\n\n".encode())
        await stream.write_eof()
        return stream

    app = web.Application()
    app.router.add_post("/api/v1/chat/completions", chat)
    prov = provider(await aiohttp_server(app))
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    assert reply.headers["content-encoding"] == "gzip"
    assert await events_of(reply) == events


@pytest.mark.parametrize("framing", ["content-length", "close-delimited"])
async def test_undecodable_gzip_body_is_a_body_cut(framing: str, serve: ServerFactory,
                                                   make_transport: TransportFactory) -> None:
    garbage = b"this is not gzip at all"
    if framing == "content-length":
        handler = answer(response(garbage, "200 OK", "Content-Encoding: gzip"))
    else:
        handler = answer(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n\r\n", garbage, close=True)
    server = await serve(handler)
    prov = provider(server.base_url)
    with pytest.raises(BodyCut):
        await make_transport(prov).send(outgoing(prov))


async def test_unsupported_content_encoding_is_connection_lost(serve: ServerFactory,
                                                               make_transport: TransportFactory) -> None:
    server = await serve(answer(response(b"\x1b\x00\x00", "200 OK", "Content-Encoding: br")))
    prov = provider(server.base_url)
    with pytest.raises(ConnectionLost, match="malformed"):
        await make_transport(prov).send(outgoing(prov))


async def test_garbage_instead_of_http_is_connection_lost(serve: ServerFactory,
                                                          make_transport: TransportFactory) -> None:
    server = await serve(answer(b"SSH-2.0-OpenSSH_9.2\r\n\r\n"))
    prov = provider(server.base_url)
    with pytest.raises(ConnectionLost, match="malformed"):
        await make_transport(prov).send(outgoing(prov))


# --- 3. server-sent events ------------------------------------------------------------------------------

async def test_events_are_parsed_across_arbitrary_chunk_boundaries(serve: ServerFactory,
                                                                   make_transport: TransportFactory) -> None:
    datas = [json.dumps({"choices": [{"index": 0, "delta": {"content": f"tok{i} é"}}]}) for i in range(8)]
    stream = b"".join(f"data: {d}\n\n".encode() for d in datas) + b": keep-alive\n\nevent: note\r\ndata: x\r\n\r\n"
    cuts = [0, 1, 5, 6, 7, 50, 51, 120, 333, 334, len(stream) - 2, len(stream)]
    parts = [chunk(stream[a:b]) for a, b in itertools.pairwise(cuts) if b > a]
    server = await serve(answer(chunked_head(), *parts, LAST_CHUNK))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    events = [event async for event in reply.events()]
    assert [e.data for e in events] == [*datas, "x"]
    assert events[-1].event == "note"
    assert b"".join(e.raw for e in events[:-1]) == stream[:stream.index(b": keep")]


@pytest.mark.parametrize("framing", ["chunked", "close-delimited"])
async def test_stream_ending_inside_an_event_is_a_body_cut(framing: str, serve: ServerFactory,
                                                           make_transport: TransportFactory) -> None:
    if framing == "chunked":
        handler = answer(chunked_head(), chunk(b'data: {"a": 1}\n\n'), chunk(b'data: {"b"'), LAST_CHUNK)
    else:
        handler = answer(b"HTTP/1.1 200 OK\r\n\r\n", b'data: {"a": 1}\n\n', b'data: {"b"', close=True)
    server = await serve(handler)
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    seen = []
    with pytest.raises(BodyCut, match="inside an event"):
        async for event in reply.events():
            seen.append(event.data)
    assert seen == ['{"a": 1}']


ECHO = json.dumps({"error": {"message": f"Incorrect API key provided: {KEY}; X-Org-Token: org-token-123456"}})


async def test_our_key_echoed_in_a_body_is_redacted(serve: ServerFactory, make_transport: TransportFactory) -> None:
    raw = response(ECHO.encode(), "401 Unauthorized")
    cut = raw.index(KEY.encode()) + 5  # the key arrives in two pieces
    server = await serve(answer(raw[:cut], raw[cut:]))
    prov = provider(server.base_url, headers={"X-Org-Token": "org-token-123456"})
    body = await (await make_transport(prov).send(outgoing(prov))).read()
    assert json.loads(body)["error"]["message"] == "Incorrect API key provided: [redacted]; X-Org-Token: [redacted]"


async def test_our_key_echoed_in_a_stream_event_is_redacted(serve: ServerFactory,
                                                            make_transport: TransportFactory) -> None:
    event = f"data: {ECHO}\n\n".encode()
    cut = event.index(KEY.encode()) + 3
    server = await serve(answer(chunked_head(), chunk(b"data: clean\n\n"), chunk(event[:cut]), chunk(event[cut:]),
                                LAST_CHUNK))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    events = [e async for e in reply.events()]
    assert events[0].raw == b"data: clean\n\n"
    assert KEY not in events[1].data and KEY.encode() not in events[1].raw
    assert json.loads(events[1].data)["error"]["message"].startswith("Incorrect API key provided: [redacted];")


# --- 4. keep-alive -----------------------------------------------------------------------------------

async def test_sequential_requests_reuse_one_connection(serve: ServerFactory,
                                                        make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    for i in range(3):
        assert await (await transport.send(outgoing(prov, request_id=f"r{i}"))).read() == COMPLETION
    assert len(server.peers) == 1
    assert [r.header("X-Request-ID") for r in server.peers[0].requests] == ["r0", "r1", "r2"]


async def test_bytes_after_a_complete_answer_retire_the_connection_and_leave_the_answer_intact(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    # Two answers to one request: the second could otherwise be taken for the next request's answer.
    server = await serve(answer(response() + response(b'{"stale": true}')))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov))
    connection = connection_of(reply)
    assert await reply.read() == COMPLETION  # as aiohttp's client: the answer to this request is whole
    assert connection.closed
    server.handler = answer(response())
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


async def test_bytes_on_an_idle_connection_retire_it(serve: ServerFactory,
                                                     make_transport: TransportFactory) -> None:
    idle = asyncio.Event()  # the answer was read: the connection is back in the pool

    async def then_unsolicited(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, response())
        await idle.wait()
        await dribble(peer.writer, b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n")

    server = await serve(then_unsolicited)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    idle.set()
    await eventually(lambda: server.peers[0].eof.is_set() or server.peers[0].writer.is_closing())
    server.handler = answer(response())
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


def when_read(monkeypatch: pytest.MonkeyPatch, data: bytes) -> asyncio.Event:
    """Set once a connection has taken in a read that ends with `data` (its data_received ran): the
    client's loop read it, so the check before reuse (a readable socket) no longer sees it."""
    read = asyncio.Event()
    original = http1.Connection.data_received

    def spy(self: http1.Connection, received: bytes) -> None:
        original(self, received)
        if received.endswith(data):
            read.set()

    monkeypatch.setattr(http1.Connection, "data_received", spy)
    return read


def pooled_connections(monkeypatch: pytest.MonkeyPatch) -> list[http1.Connection]:
    """Every connection put back in a pool, even for a moment."""
    pooled: list[http1.Connection] = []
    original = http1.Pool.put_back

    def spy(self: http1.Pool, connection: http1.Connection) -> None:
        pooled.append(connection)
        original(self, connection)

    monkeypatch.setattr(http1.Pool, "put_back", spy)
    return pooled


async def first_answer_scripted(serve: ServerFactory, make_transport: TransportFactory,
                                 script: Callable[[Peer], Awaitable[None]]
                                 ) -> tuple[ScriptedServer, HttpTransport, Provider]:
    """A server whose first connection's first request gets `script`, and every other request a plain
    answer; a transport to it that waits at most 1 s for anything."""
    first: list[Peer] = []

    async def handle(request: Request, peer: Peer) -> None:
        if not first:
            first.append(peer)
        if peer is not first[0] or len(peer.requests) > 1:
            await answer(response())(request, peer)
            return
        await script(peer)

    server = await serve(handle)
    prov = provider(server.base_url, timeouts=Timeouts(first_byte_s=1.0, idle_s=1.0))
    return server, make_transport(prov), prov


UNSOLICITED = {
    "garbage": b"\x00garbage",
    "an empty line": b"\r\n",  # llhttp skips it before an answer: only the connection's own check sees it
    "a 408 head": b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\n\r\n",
}


@pytest.mark.parametrize("unsolicited", list(UNSOLICITED.values()), ids=list(UNSOLICITED))
async def test_any_bytes_read_on_an_idle_pooled_connection_retire_it(
        unsolicited: bytes, serve: ServerFactory, make_transport: TransportFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Bytes a pooled connection receives answer no request, and say its framing is no longer known:
    # it is closed as they are read, and the next request goes out once, on a fresh connection.
    pooled = asyncio.Event()

    async def script(peer: Peer) -> None:
        await dribble(peer.writer, response())
        await pooled.wait()
        await dribble(peer.writer, unsolicited)

    read = when_read(monkeypatch, unsolicited)
    server, transport, prov = await first_answer_scripted(serve, make_transport, script)
    first = await transport.send(outgoing(prov))
    connection = connection_of(first)
    assert await first.read() == COMPLETION
    assert connection.state is http1.State.IDLE  # back in the pool
    pooled.set()
    await asyncio.wait_for(read.wait(), 1.0)
    assert connection.closed
    second = await transport.send(outgoing(prov))
    assert not second.resent and connection_of(second) is not connection
    assert await second.read() == COMPLETION
    assert len(server.peers) == 2


async def test_bytes_after_a_stream_its_reader_still_holds_retire_the_connection_not_the_answer(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The stream ended (the terminator came with its [DONE]) and its reader has not let it go yet: an
    # empty line arriving now is read while the connection is complete, not idle. The answer stays
    # whole; the connection does not go back to the pool when the reader is done.
    more = asyncio.Event()

    async def script(peer: Peer) -> None:
        await dribble(peer.writer, chunked_head() + chunk(b"data: a\n\n") + chunk(b"data: [DONE]\n\n") + LAST_CHUNK)
        await more.wait()
        await dribble(peer.writer, b"\r\n")

    read = when_read(monkeypatch, b"\r\n")
    pooled = pooled_connections(monkeypatch)
    server, transport, prov = await first_answer_scripted(serve, make_transport, script)
    reply = await transport.send(outgoing(prov, stream=True))
    connection = connection_of(reply)
    batches = reply.batches()
    seen: list[str] = []
    while "[DONE]" not in seen:  # read as the router reads: up to [DONE], holding the reply
        seen += [one.data for item in await anext(batches)
                 for one in (item.events() if isinstance(item, SseRun) else [item])]
    assert seen == ["a", "[DONE]"]
    assert connection.state is http1.State.COMPLETE  # ended, not yet released
    more.set()
    await asyncio.wait_for(read.wait(), 1.0)
    assert connection.closed
    with pytest.raises(StopAsyncIteration):  # the answer itself ended cleanly
        await anext(batches)
    assert connection not in pooled
    second = await transport.send(outgoing(prov))
    assert connection_of(second) is not connection
    assert await second.read() == COMPLETION
    assert len(server.peers) == 2


# The start of another answer, as a provider that answered twice (or a proxy out of step) would send it.
SECOND_HEAD = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 10\r\n"


@pytest.mark.parametrize("with_the_done", [False, True], ids=["after-the-done-was-read", "with-the-done"])
async def test_bytes_in_the_read_that_ends_a_stream_keep_its_connection_out_of_the_pool(
        with_the_done: bool, serve: ServerFactory, make_transport: TransportFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The chunked terminator and the start of another answer in one write, after the router stopped
    # reading at [DONE] (the connection is draining, and the terminator ends the drain in the middle of
    # the read), or with the [DONE] itself (the stream ends while it is read). Either way the connection
    # never goes back to the pool, not even until the rest of that read is parsed.
    ending = (chunk(b"data: [DONE]\n\n") if with_the_done else b"") + LAST_CHUNK + SECOND_HEAD
    drained = asyncio.Event()

    async def script(peer: Peer) -> None:
        if with_the_done:
            await dribble(peer.writer, chunked_head() + chunk(b"data: a\n\n"), ending)
        else:
            await dribble(peer.writer, chunked_head() + chunk(b"data: a\n\n") + chunk(b"data: [DONE]\n\n"))
            await drained.wait()
            await dribble(peer.writer, ending)

    read = when_read(monkeypatch, ending)
    pooled = pooled_connections(monkeypatch)
    server, transport, prov = await first_answer_scripted(serve, make_transport, script)
    reply = await transport.send(outgoing(prov, stream=True))
    connection = connection_of(reply)
    assert await _read_to_done_and_close(reply) == ["a", "[DONE]"]
    if not with_the_done:
        assert connection.state is http1.State.DRAINING
        drained.set()
    await asyncio.wait_for(read.wait(), 1.0)
    assert connection.closed
    assert connection not in pooled
    second = await transport.send(outgoing(prov))
    assert not second.resent and connection_of(second) is not connection
    assert await second.read() == COMPLETION
    assert len(server.peers) == 2


async def test_a_fully_read_stream_leaves_its_connection_reusable(serve: ServerFactory,
                                                                  make_transport: TransportFactory) -> None:
    server = await serve(answer(chunked_head(), chunk(b"data: a\n\n"), chunk(b"data: [DONE]\n\n"), LAST_CHUNK))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await events_of(await transport.send(outgoing(prov, stream=True))) == ["a", "[DONE]"]
    assert await events_of(await transport.send(outgoing(prov, stream=True))) == ["a", "[DONE]"]
    assert len(server.peers) == 1


@pytest.mark.parametrize("ending", ["connection-close", "http/1.0", "close-delimited"])
async def test_a_response_that_ends_its_connection_is_not_reused(ending: str, serve: ServerFactory,
                                                                 make_transport: TransportFactory) -> None:
    if ending == "connection-close":
        first = answer(response(COMPLETION, "200 OK", "Connection: close"))
    elif ending == "http/1.0":
        first = answer(response().replace(b"HTTP/1.1", b"HTTP/1.0", 1))
    else:
        first = answer(b"HTTP/1.1 200 OK\r\n\r\n" + COMPLETION, close=True)

    async def handle(request: Request, peer: Peer) -> None:
        await (first if len(server.peers) == 1 else answer(response()))(request, peer)

    server = await serve(handle)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    if ending != "close-delimited":  # the server keeps its side open: the client must close it
        await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


async def test_idle_connection_closed_by_the_server_is_not_reused_once_the_close_is_seen(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(response(), close=True))  # keep-alive promised, then closed while idle
    prov = provider(server.base_url)
    transport = make_transport(prov)
    first = await transport.send(outgoing(prov))
    connection = connection_of(first)
    assert await first.read() == COMPLETION
    await eventually(lambda: connection.closed)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


async def test_a_send_racing_the_servers_idle_close_goes_out_again_on_a_new_connection(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # The provider closed the idle connection, and the client's loop has not read the FIN yet. The
    # check before reuse sees it (the socket is readable): the request goes out on a new connection.
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    first = await transport.send(outgoing(prov))
    connection = connection_of(first)
    assert await first.read() == COMPLETION
    server.peers[0].writer.close()
    await server.peers[0].writer.wait_closed()
    assert not connection.closed  # closed on the server; the client's loop has not read the FIN yet
    second = await transport.send(outgoing(prov))
    # Seen before the request was written, not after it failed there: sent once, not resent (the
    # resend would give the same answer and the same counts on the server, and hide the missing check).
    assert not second.resent
    assert connection_of(second) is not connection
    assert await second.read() == COMPLETION
    assert connection.closed
    assert len(server.peers) == 2 and len(server.requests) == 2


async def test_a_reused_connection_that_dies_before_any_byte_is_retried_once_on_a_new_one(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the check before reuse (as if the FIN came a moment later), the request is written to
    # the dead connection; it fails before any byte of the answer, and goes out once more on a new one.
    monkeypatch.setattr(http1.Connection, "is_stale", lambda self: self.closed)
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    server.peers[0].writer.close()
    await server.peers[0].writer.wait_closed()
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2 and len(server.requests) == 2


async def test_a_new_connection_that_dies_before_any_byte_is_not_sent_again(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    # A fresh connection that fails may have delivered the request: sending it again could run it twice.
    async def close_at_once(request: Request, peer: Peer) -> None:
        peer.writer.close()

    server = await serve(close_at_once)
    prov = provider(server.base_url)
    with pytest.raises(ConnectionLost):
        await make_transport(prov).send(outgoing(prov))
    assert len(server.requests) == 1


async def test_a_stream_closed_before_its_end_is_not_reused(serve: ServerFactory,
                                                            make_transport: TransportFactory) -> None:
    async def handle(request: Request, peer: Peer) -> None:
        if len(server.peers) == 1:
            await dribble(peer.writer, chunked_head(), chunk(b"data: one\n\n"))
            await peer.read_to_eof()
        else:
            await answer(response())(request, peer)

    server = await serve(handle)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov, stream=True))
    async for event in reply.events():
        assert event.data == "one"
        break
    reply.close()
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


async def _read_to_done_and_close(reply: _HttpReply) -> list[str]:
    """What the router does with a stream: read events up to [DONE], then close the iterator and the reply."""
    events = reply.events()
    seen = []
    async for event in events:
        seen.append(event.data)
        if event.is_done:
            break
    await events.aclose()  # type: ignore[attr-defined]
    reply.close()
    return seen


async def test_a_stream_closed_after_its_done_is_reused_once_the_terminator_follows(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    terminate = asyncio.Event()

    async def handle(request: Request, peer: Peer) -> None:
        if len(peer.requests) == 1:
            await dribble(peer.writer, chunked_head(), chunk(b"data: a\n\n"), chunk(b"data: [DONE]\n\n"))
            await terminate.wait()  # the terminating chunk comes after the router is done with the stream
            await dribble(peer.writer, LAST_CHUNK)
        else:
            await answer(response())(request, peer)

    server = await serve(handle)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov, stream=True))
    connection = connection_of(reply)
    assert await _read_to_done_and_close(reply) == ["a", "[DONE]"]
    assert not connection.closed  # draining the rest, not closed
    terminate.set()
    await eventually(lambda: connection.state is http1.State.IDLE)  # the terminator came: back in the pool
    second = await transport.send(outgoing(prov))
    assert connection_of(second) is connection
    assert await second.read() == COMPLETION
    assert len(server.peers) == 1


async def test_a_stream_whose_terminator_does_not_follow_its_done_is_closed_after_the_drain_time(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1_connection, "DRAIN_S", 0.1)
    server = await serve(answer(chunked_head(), chunk(b"data: a\n\n"), chunk(b"data: [DONE]\n\n")))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov, stream=True))
    closed_from = time.monotonic()
    assert await _read_to_done_and_close(reply) == ["a", "[DONE]"]
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)
    assert time.monotonic() - closed_from >= 0.08  # waited for the terminator first
    server.handler = answer(response())
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 2


async def test_a_stream_that_goes_on_after_its_done_is_closed_once_past_the_drain_limit(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http1_connection, "DRAIN_S", 60.0)  # the close below comes from the byte limit, not the timer
    more = asyncio.Event()

    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, chunked_head(), chunk(b"data: [DONE]\n\n"))
        await more.wait()
        await dribble(peer.writer, chunk(b"x" * (http1_connection.DRAIN_LIMIT + 1)))
        await peer.read_to_eof()

    server = await serve(handle)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov, stream=True))
    connection = connection_of(reply)
    assert await _read_to_done_and_close(reply) == ["[DONE]"]
    assert not connection.closed
    more.set()
    await asyncio.wait_for(server.peers[0].eof.wait(), 5.0)
    assert connection.closed


async def test_idle_connections_are_closed_after_the_keepalive_expiry(
        serve: ServerFactory, make_transport: TransportFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fast_client, "KEEPALIVE_S", 0.2)  # read when the transport is built
    server = await serve(answer(response()))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    idle_from = time.monotonic()
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)
    assert time.monotonic() - idle_from >= 0.15  # kept for the expiry, not closed at once


# --- 5. failures and timeouts ---------------------------------------------------------------------

async def test_connection_refused_is_connect_failed(make_transport: TransportFactory) -> None:
    with socket.socket() as closed_port:  # bound, not listening: connecting is refused
        closed_port.bind(("127.0.0.1", 0))
        prov = provider(f"http://127.0.0.1:{closed_port.getsockname()[1]}/v1")
        with pytest.raises(ConnectFailed, match="cannot connect") as info:
            await make_transport(prov).send(outgoing(prov))
    assert not info.value.deadline_bound


@pytest.fixture
async def hanging_connect(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The running loop's create_connection never completes; the list gets the time of each attempt."""
    attempts: list[float] = []

    async def hang(*args: object, **kwargs: object) -> None:
        attempts.append(time.monotonic())
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", hang)
    return attempts


async def test_connect_timeout_is_connect_failed(hanging_connect: list[float],
                                                 make_transport: TransportFactory) -> None:
    prov = provider("http://127.0.0.1:9/v1", timeouts=Timeouts(connect_s=0.1, first_byte_s=5.0))
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="connect timeout") as info:
        await make_transport(prov).send(outgoing(prov))
    assert 0.09 <= time.monotonic() - started < 1.0
    assert not info.value.deadline_bound
    assert len(hanging_connect) == 1


async def test_connect_capped_by_the_deadline_is_deadline_bound(hanging_connect: list[float],
                                                                make_transport: TransportFactory) -> None:
    # The first-byte window, capped by the same deadline, expires with the connect timer: which of
    # the two is reported does not matter, that it is the deadline does.
    prov = provider("http://127.0.0.1:9/v1", timeouts=Timeouts(connect_s=5.0, first_byte_s=5.0))
    started = time.monotonic()
    with pytest.raises((ConnectFailed, FirstByteTimeout)) as info:
        await make_transport(prov).send(outgoing(prov, deadline_in=0.1))
    assert time.monotonic() - started < 1.0
    assert isinstance(info.value, TransportError) and info.value.deadline_bound
    assert classify_exception(info.value).reason is Reason.DEADLINE


async def test_no_headers_within_first_byte_s_is_first_byte_timeout(serve: ServerFactory,
                                                                    make_transport: TransportFactory) -> None:
    server = await serve(silent)
    prov = provider(server.base_url, timeouts=Timeouts(first_byte_s=0.1))
    started = time.monotonic()
    with pytest.raises(FirstByteTimeout) as info:
        await make_transport(prov).send(outgoing(prov))
    assert 0.09 <= time.monotonic() - started < 1.0
    assert not info.value.deadline_bound
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)  # the abandoned connection is closed


async def test_first_byte_wait_capped_by_the_deadline_is_deadline_bound(serve: ServerFactory,
                                                                        make_transport: TransportFactory) -> None:
    server = await serve(silent)
    prov = provider(server.base_url, timeouts=Timeouts(first_byte_s=30.0))
    started = time.monotonic()
    with pytest.raises(FirstByteTimeout) as info:
        await make_transport(prov).send(outgoing(prov, deadline_in=0.1))
    assert time.monotonic() - started < 1.0
    assert info.value.deadline_bound


async def test_body_that_stalls_after_the_headers_is_an_idle_timeout(serve: ServerFactory,
                                                                     make_transport: TransportFactory) -> None:
    async def stall(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, response()[:-10])
        await peer.read_to_eof()

    server = await serve(stall)
    prov = provider(server.base_url, timeouts=Timeouts(first_byte_s=5.0, idle_s=0.1))
    started = time.monotonic()
    with pytest.raises(IdleTimeout) as info:
        await make_transport(prov).send(outgoing(prov))
    assert 0.09 <= time.monotonic() - started < 1.0
    assert not info.value.deadline_bound


async def test_stream_that_stalls_after_an_event_is_an_idle_timeout(serve: ServerFactory,
                                                                    make_transport: TransportFactory) -> None:
    async def stall(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, chunked_head(), chunk(b"data: one\n\n"))
        await peer.read_to_eof()

    server = await serve(stall)
    prov = provider(server.base_url, timeouts=Timeouts(idle_s=0.1))
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    seen = []
    with pytest.raises(IdleTimeout) as info:
        async for event in reply.events():
            seen.append(event.data)
    assert seen == ["one"]
    assert not info.value.deadline_bound
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)


async def test_reset_mid_stream_is_a_body_cut(serve: ServerFactory, make_transport: TransportFactory) -> None:
    first_read = asyncio.Event()

    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, chunked_head(), chunk(b"data: one\n\n"))
        await first_read.wait()
        reset(peer.writer)

    server = await serve(handle)
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    seen = []
    with pytest.raises(BodyCut, match="mid-body"):
        async for event in reply.events():
            seen.append(event.data)
            first_read.set()
    assert seen == ["one"]


async def test_close_before_the_content_length_is_complete_is_a_body_cut(serve: ServerFactory,
                                                                         make_transport: TransportFactory) -> None:
    server = await serve(answer(response()[:-10], close=True))
    prov = provider(server.base_url)
    with pytest.raises(BodyCut, match="mid-body"):
        await make_transport(prov).send(outgoing(prov))


@pytest.mark.parametrize("how", ["reset", "close"])
async def test_connection_ended_before_the_headers_is_connection_lost(how: str, serve: ServerFactory,
                                                                      make_transport: TransportFactory) -> None:
    async def handle(request: Request, peer: Peer) -> None:
        if how == "reset":
            reset(peer.writer)
        else:
            await dribble(peer.writer, b"HTTP/1.1 200 OK\r\nContent-")
            peer.writer.close()

    server = await serve(handle)
    prov = provider(server.base_url)
    with pytest.raises(ConnectionLost):
        await make_transport(prov).send(outgoing(prov))


# --- 6. slots and cancellation ----------------------------------------------------------------------

async def stream_then_hold(request: Request, peer: Peer) -> None:
    await dribble(peer.writer, chunked_head(), chunk(b"data: one\n\n"))
    await peer.read_to_eof()


async def test_full_slots_are_connect_failed_after_connect_s(serve: ServerFactory,
                                                             make_transport: TransportFactory) -> None:
    server = await serve(stream_then_hold)
    prov = provider(server.base_url, max_connections=1, timeouts=Timeouts(connect_s=0.1))
    transport = make_transport(prov)
    held = await transport.send(outgoing(prov, stream=True))
    started = time.monotonic()
    with pytest.raises(ConnectFailed, match="no free connection slot") as info:
        await transport.send(outgoing(prov, stream=True))
    assert 0.09 <= time.monotonic() - started < 1.0
    assert not info.value.deadline_bound
    assert len(server.peers) == 1  # the waiting send never connected
    held.close()
    again = await transport.send(outgoing(prov, stream=True))
    again.close()


async def test_a_waiting_send_gets_the_slot_a_finished_reply_frees(serve: ServerFactory,
                                                                   make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url, max_connections=1, timeouts=Timeouts(connect_s=0.5))
    transport = make_transport(prov)
    first = await transport.send(outgoing(prov))
    waiting = asyncio.create_task(transport.send(outgoing(prov)))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    assert await first.read() == COMPLETION  # frees the slot
    second = await asyncio.wait_for(waiting, 1.0)
    assert await second.read() == COMPLETION
    for _ in range(3):
        assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert len(server.peers) == 1


async def test_a_cancelled_send_propagates_frees_its_slot_and_closes_its_connection(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    async def handle(request: Request, peer: Peer) -> None:
        await (silent if len(server.requests) == 1 else answer(response()))(request, peer)

    server = await serve(handle)
    prov = provider(server.base_url, max_connections=1, timeouts=Timeouts(connect_s=0.1))
    transport = make_transport(prov)
    task = asyncio.create_task(transport.send(outgoing(prov)))
    await asyncio.wait_for(server.received.wait(), 1.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)
    reply = await asyncio.wait_for(transport.send(outgoing(prov)), 1.0)  # the slot was released
    assert await reply.read() == COMPLETION
    assert len(server.peers) == 2


async def test_aclose_fails_requests_in_flight_and_closes_every_connection(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    waiting = await serve(silent)
    streaming = await serve(stream_then_hold)
    idle = await serve(answer(response()))
    provs = [provider(s.base_url, name=name)
             for name, s in (("waiting", waiting), ("streaming", streaming), ("idle", idle))]
    transport = make_transport(*provs)
    assert await (await transport.send(outgoing(provs[2]))).read() == COMPLETION
    stream = await transport.send(outgoing(provs[1], stream=True))
    events = stream.events()
    assert (await anext(events)).data == "one"
    pending = asyncio.create_task(transport.send(outgoing(provs[0])))
    await asyncio.wait_for(waiting.received.wait(), 1.0)
    await transport.aclose()
    with pytest.raises(ConnectionLost):
        await asyncio.wait_for(pending, 1.0)
    with pytest.raises(BodyCut):
        await asyncio.wait_for(anext(events), 1.0)
    for server in (waiting, streaming, idle):
        await asyncio.wait_for(server.peers[0].eof.wait(), 1.0)


async def test_aclose_during_a_close_delimited_body_is_a_body_cut_not_its_end(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n", b"data: one\n\n")
        await peer.read_to_eof()

    server = await serve(handle)
    prov = provider(server.base_url)
    transport = make_transport(prov)
    reply = await transport.send(outgoing(prov, stream=True))
    events = reply.events()
    assert (await anext(events)).data == "one"
    await transport.aclose()
    with pytest.raises(BodyCut):
        await asyncio.wait_for(anext(events), 1.0)


# --- 7. back-pressure -----------------------------------------------------------------------------------

async def test_a_slow_reader_holds_back_a_large_stream_and_gets_it_intact(serve: ServerFactory,
                                                                          make_transport: TransportFactory) -> None:
    datas = [f"{i:06d}" + "x" * 1000 for i in range(1500)]  # ~1.5 MiB
    stream = b"".join(f"data: {d}\n\n".encode() for d in datas)

    async def handle(request: Request, peer: Peer) -> None:
        peer.writer.write(chunked_head() + chunk(stream) + LAST_CHUNK)
        await peer.writer.drain()

    server = await serve(handle)
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    connection, response = connection_of(reply), response_of(reply)
    socket_transport = connection.transport
    assert socket_transport is not None
    seen: list[str] = []
    paused, most_buffered = 0, 0
    async for event in reply.events():
        seen.append(event.data)
        if len(seen) % 300 == 1:  # now and then, stop reading until the client stops reading too
            await eventually(lambda: not socket_transport.is_reading() or response.at_eof())
            paused += not socket_transport.is_reading()
            most_buffered = max(most_buffered, response.buffered)
    assert seen == datas
    assert paused >= 3
    assert http1_connection.HIGH_WATER < most_buffered <= http1_connection.HIGH_WATER + READ_SIZE
    assert len(server.peers) == 1


# --- 8. TLS ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 that no CA signed (made by the openssl command line)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    return cert, key


def server_tls(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


async def test_https_provider_with_an_untrusted_certificate_is_refused(
        self_signed: tuple[Path, Path], serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(response()), tls=server_tls(*self_signed))
    prov = provider(server.base_url)
    with pytest.raises(ConnectFailed, match="cannot connect") as info:
        await make_transport(prov).send(outgoing(prov))
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__context__)  # the client's error, kept as context
    assert server.requests == []


async def test_https_provider_is_served_once_its_certificate_is_trusted(
        self_signed: tuple[Path, Path], serve: ServerFactory, make_transport: TransportFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The control for the test above: the same server, its certificate now in the default trust store.
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
    server = await serve(answer(response()), tls=server_tls(*self_signed))
    prov = provider(server.base_url)
    transport = make_transport(prov)
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert await (await transport.send(outgoing(prov))).read() == COMPLETION
    assert server.requests[0].header("Authorization") == f"Bearer {KEY}"
    assert len(server.peers) == 1


async def test_an_inflated_read_reaches_a_stream_reader_a_bounded_slice_at_a_time(
        serve: ServerFactory, make_transport: TransportFactory) -> None:
    # One compressed read can inflate to megabytes at once. Handed over whole, a stream's reader parsed
    # all of it into events at once: a 26 MB gzip stream held about 100 MB (4x) until its end.
    events = b"".join(b"data: %d %s\n\n" % (i, b"x" * 1000) for i in range(4000)) + b"data: [DONE]\n\n"
    server = await serve(answer(chunked_head("Content-Encoding: gzip") + chunk(gzip.compress(events)) + LAST_CHUNK))
    prov = provider(server.base_url)
    reply = await make_transport(prov).send(outgoing(prov, stream=True))
    sizes = []
    async for batch in reply.batches():
        sizes.append(sum(len(item.raw) for item in batch))
    assert sum(sizes) == len(events)  # every event, in order, none lost at a slice's edge
    # A slice, plus the end of an event the previous slice began (each event is about 1 KB).
    assert len(sizes) > 10 and max(sizes) <= http1_response.READ_MOST + 1100
