"""One contract for both upstream clients: the same wire scripts, the same verdicts.

Each case is a real loopback server answering with scripted bytes (tests/support/wire_server.py).
The answer goes through `HttpTransport` once with `http_client: fast` (router/upstream/http1/)
and once with `http_client: aiohttp`, and is reduced to what the engine acts on: the status and
the body or events of a reply, or the classifier's reason for a failure. Both clients must give
the expected verdict, so they can never disagree about what a provider did.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import MappingProxyType

import pytest

from router.engine.classify import classify_exception
from router.observe.prometheus import PrometheusObserver
from router.policy import policy_from_mapping
from router.policy.model import Provider, Timeouts
from router.router import Router
from router.upstream.errors import TransportError
from router.upstream.transport import HttpTransport, Outgoing, Reply
from tests.metrics.helpers import Scrape
from tests.support.wire_server import (
    COMPLETION,
    LAST_CHUNK,
    Handler,
    Peer,
    Request,
    answer,
    chunk,
    chunked_head,
    dribble,
    reset,
    response,
    silent,
)
from tests.upstream.conftest import ServerFactory, TransportFactory

CLIENTS = ("fast", "aiohttp")
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
TIMEOUTS = Timeouts(connect_s=1.0, first_byte_s=0.3, idle_s=0.3)
EVENTS = [json.dumps({"choices": [{"delta": {"content": f"t{i}"}}]}) for i in range(3)]
SSE = b"".join(b"data: " + e.encode() + b"\n\n" for e in EVENTS) + b"data: [DONE]\n\n"


def provider(base_url: str, client: str, *, max_response_bytes: int = 32 * 1024 * 1024,
             timeouts: Timeouts = TIMEOUTS) -> Provider:
    return Provider("aimo", base_url, api_key="sk-contract-key-0123", headers=MappingProxyType({}),
                    timeouts=timeouts, http_client=client, max_response_bytes=max_response_bytes)


Verdict = tuple[object, ...]


async def verdict(transport: HttpTransport, prov: Provider, *, stream: bool) -> Verdict:
    """What the engine would act on: ("reply", status, body or event data) or ("failed", reason)."""
    outgoing = Outgoing(provider=prov, body=BODY, request_id="contract-1", stream=stream,
                        deadline=time.monotonic() + 30.0)
    try:
        reply = await transport.send(outgoing)
        try:
            if stream and 200 <= reply.status < 300:
                return ("reply", reply.status, tuple([event.data async for event in reply.events()]))
            return ("reply", reply.status, await reply.read())
        finally:
            reply.close()
    except TransportError as exc:
        return ("failed", str(classify_exception(exc).reason))


def ok(body: bytes = COMPLETION, status: int = 200) -> Verdict:
    return ("reply", status, body)


def events(*data: str) -> Verdict:
    return ("reply", 200, data)


def failed(reason: str) -> Verdict:
    return ("failed", reason)


def close_after(*pieces: bytes) -> Handler:
    return answer(*pieces, close=True)


def reset_after(*pieces: bytes) -> Handler:
    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, *pieces)
        reset(peer.writer)

    return handle


def stall_after(*pieces: bytes) -> Handler:
    async def handle(request: Request, peer: Peer) -> None:
        await dribble(peer.writer, *pieces)
        await peer.read_to_eof()

    return handle


def split_everywhere(data: bytes) -> Handler:
    return answer(*(data[i:i + 1] for i in range(len(data))))


def head(*lines: str, status: str = "200 OK") -> bytes:
    return ("\r\n".join([f"HTTP/1.1 {status}", *lines]) + "\r\n\r\n").encode()


@dataclass(frozen=True)
class Case:
    name: str
    script: Handler
    expect: Verdict
    stream: bool = False


_GZIPPED = gzip.compress(COMPLETION * 20)
_CHUNKED_JSON = head("Content-Type: application/json", "Transfer-Encoding: chunked") + \
    chunk(COMPLETION[:10]) + chunk(COMPLETION[10:]) + LAST_CHUNK

CASES = [
    # -- answers, however they are framed ------------------------------------------------------------
    Case("content-length", answer(response()), ok()),
    Case("content-length, one byte per write", split_everywhere(response()), ok()),
    Case("chunked", answer(_CHUNKED_JSON), ok()),
    Case("chunked, one byte per write", split_everywhere(_CHUNKED_JSON), ok()),
    Case("framed by the connection's end", close_after(head("Content-Type: application/json") + COMPLETION), ok()),
    Case("gzip", answer(response(_GZIPPED, "200 OK", "Content-Encoding: gzip")), ok(COMPLETION * 20)),
    Case("deflate (zlib)", answer(response(zlib.compress(COMPLETION), "200 OK", "Content-Encoding: deflate")),
         ok()),
    Case("interim 100 and 103 before the answer",
         answer(b"HTTP/1.1 100 Continue\r\n\r\n", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", response()), ok()),
    Case("framed by the connection's end, Transfer-Encoding: identity",
         close_after(head("Content-Type: application/json", "Transfer-Encoding: identity") + COMPLETION), ok()),
    Case("raw deflate (no zlib header), as some servers send it",
         answer(response(zlib.compress(COMPLETION)[2:-4], "200 OK", "Content-Encoding: deflate")), ok()),
    Case("a header folded over two lines (obs-fold)",
         answer(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Folded: one\r\n two\r\n"
                b"Content-Length: %d\r\n\r\n" % len(COMPLETION) + COMPLETION), ok()),
    Case("an error status is a reply", answer(response(b'{"error": {}}', "503 Service Unavailable")),
         ok(b'{"error": {}}', 503)),
    Case("a redirect is returned, not followed",
         answer(response(b"", "307 Temporary Redirect", "Location: http://127.0.0.1:9/elsewhere")), ok(b"", 307)),
    # -- streams ---------------------------------------------------------------------------------------
    Case("stream, chunked", answer(chunked_head(), chunk(SSE), LAST_CHUNK), events(*EVENTS, "[DONE]"), stream=True),
    Case("stream, events split across chunks", answer(chunked_head(), *(chunk(SSE[i:i + 7])
                                                                          for i in range(0, len(SSE), 7)), LAST_CHUNK),
         events(*EVENTS, "[DONE]"), stream=True),
    Case("stream framed by the connection's end", close_after(head("Content-Type: text/event-stream"), SSE),
         events(*EVENTS, "[DONE]"), stream=True),
    Case("stream ending inside an event", answer(chunked_head(), chunk(SSE[:20]), LAST_CHUNK),
         failed("stream_cut"), stream=True),
    Case("stream reset mid-way", reset_after(chunked_head(), chunk(SSE[:40])), failed("stream_cut"), stream=True),
    Case("stream that stalls after an event", stall_after(chunked_head(), chunk(SSE[:40])),
         failed("stream_stall"), stream=True),
    # -- failures --------------------------------------------------------------------------------------
    Case("silence", silent, failed("first_byte_timeout")),
    Case("closed before the head", close_after(), failed("connection_lost")),
    Case("reset before the head", reset_after(), failed("connection_lost")),
    Case("closed inside the head", close_after(b"HTTP/1.1 200 OK\r\nContent-Le"), failed("connection_lost")),
    Case("not HTTP", close_after(b"SSH-2.0-OpenSSH_9.6\r\n"), failed("connection_lost")),
    Case("body that stalls after the head", stall_after(head("Content-Length: 100"), b"{"), failed("stream_stall")),
    Case("closed before the content length", close_after(head("Content-Length: 100"), b"{"), failed("stream_cut")),
    Case("reset inside a chunked body", reset_after(head("Transfer-Encoding: chunked"), chunk(b"{")),
         failed("stream_cut")),
    Case("gzip that does not decode", answer(response(b"\x1f\x8bnot gzip at all", "200 OK",
                                                      "Content-Encoding: gzip")), failed("stream_cut")),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
@pytest.mark.slow
async def test_both_clients_give_the_same_verdict(case: Case, client: str, serve: ServerFactory,
                                                  make_transport: TransportFactory) -> None:
    server = await serve(case.script)
    prov = provider(server.base_url, client)
    assert await verdict(make_transport(prov), prov, stream=case.stream) == case.expect


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_refused_connection_is_a_connect_error(client: str, make_transport: TransportFactory) -> None:
    with socket.socket() as closed_port:  # bound, not listening: connecting is refused
        closed_port.bind(("127.0.0.1", 0))
        prov = provider(f"http://127.0.0.1:{closed_port.getsockname()[1]}/v1", client)
        assert await verdict(make_transport(prov), prov, stream=False) == failed("connect_error")


@pytest.mark.parametrize("client", CLIENTS)
async def test_sequential_answers_share_one_connection(client: str, serve: ServerFactory,
                                                       make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    prov = provider(server.base_url, client)
    transport = make_transport(prov)
    for _ in range(3):
        assert await verdict(transport, prov, stream=False) == ok()
    assert len(server.peers) == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_connection_the_provider_closed_while_idle_is_not_reused_once_seen(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(close_after(response()))  # keep-alive promised, then closed while idle
    prov = provider(server.base_url, client)
    transport = make_transport(prov)
    assert await verdict(transport, prov, stream=False) == ok()
    await asyncio.wait_for(server.peers[0].writer.wait_closed(), 1.0)
    await asyncio.sleep(0.05)  # for the client's loop to read the FIN
    assert await verdict(transport, prov, stream=False) == ok()
    assert len(server.peers) == 2


# -- what a connection carries after its answer ----------------------------------------------------------

TRAILERS = {
    "the start of a second answer": b"HTTP/1.1 429 Too Many Requests\r\nContent-Le",
    "a whole second answer": response(b'{"error": {"code": "stale"}}', "502 Bad Gateway"),
    "garbage": b"\x00garbage",
}


def then(first: bytes, trailer: bytes) -> Handler:
    """Answer the first request with `first` + `trailer` in one write, every later one with its own echo."""
    answered = 0

    async def handle(request: Request, peer: Peer) -> None:
        nonlocal answered
        answered += 1
        peer.writer.write(first + trailer if answered == 1 else response(echo(request)))
        await peer.writer.drain()

    return handle


def echo(request: Request) -> bytes:
    return json.dumps({"id": request.header("X-Request-ID")}).encode()


async def echoed(transport: HttpTransport, prov: Provider, request_id: str) -> bytes:
    outgoing = Outgoing(provider=prov, body=BODY, request_id=request_id, stream=False,
                        deadline=time.monotonic() + 30.0)
    reply = await transport.send(outgoing)
    try:
        assert reply.status == 200, (request_id, reply.status)
        return await reply.read()
    finally:
        reply.close()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("trailer", list(TRAILERS.values()), ids=list(TRAILERS))
async def test_bytes_after_an_answer_never_reach_another_request(
        trailer: bytes, client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(then(response(), trailer))
    prov = provider(server.base_url, client)
    transport = make_transport(prov)
    # The answer that carried the trailer is whole, or its attempt failed (aiohttp, when the trailer is
    # not HTTP); it is never the trailer. The point is the requests after it.
    assert await verdict(transport, prov, stream=False) in (ok(), failed("connection_lost"))
    for n in range(3):  # the requests after it get their own answers, on a fresh connection
        assert await echoed(transport, prov, f"next-{n}") == json.dumps({"id": f"next-{n}"}).encode()


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("trailer", list(TRAILERS.values()), ids=list(TRAILERS))
async def test_bytes_after_a_stream_never_reach_another_request(
        trailer: bytes, client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(then(chunked_head() + chunk(SSE) + LAST_CHUNK, trailer))
    prov = provider(server.base_url, client)
    transport = make_transport(prov)
    assert await verdict(transport, prov, stream=True) in (events(*EVENTS, "[DONE]"), failed("connection_lost"))
    assert await echoed(transport, prov, "next") == json.dumps({"id": "next"}).encode()


@pytest.mark.parametrize("client", CLIENTS)
async def test_concurrent_requests_each_get_their_own_answer_while_some_answers_carry_trailers(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    trailers = list(TRAILERS.values())

    async def handle(request: Request, peer: Peer) -> None:
        number = int(request.header("X-Request-ID").split("-")[1])
        trailer = trailers[number % 4] if number % 4 < len(trailers) else b""
        peer.writer.write(response(echo(request)) + trailer)
        await peer.writer.drain()

    async def answer_to(request_id: str) -> bytes | None:
        try:
            return await echoed(transport, prov, request_id)
        except TransportError:
            return None

    server = await serve(handle)
    prov = provider(server.base_url, client)
    transport = make_transport(prov)
    for wave in range(5):
        ids = [f"r-{wave * 40 + i}" for i in range(40)]
        bodies = await asyncio.gather(*(answer_to(request_id) for request_id in ids))
        for request_id, body in zip(ids, bodies, strict=True):
            own = json.dumps({"id": request_id}).encode()
            if int(request_id.split("-")[1]) % 4 == 3:  # an innocent request: no trailer after its answer
                assert body == own, request_id
            else:  # its own answer, or a failed attempt: never another request's answer or a trailer
                assert body in (own, None), request_id


# -- connections the provider closes ----------------------------------------------------------------------

def close_after_each_answer() -> Handler:
    """Keep-alive promised (HTTP/1.1, no `Connection: close`), then the connection closed at once."""
    async def handle(request: Request, peer: Peer) -> None:
        peer.writer.write(response(echo(request)))
        await peer.writer.drain()
        peer.writer.close()

    return handle


def close_when_idle(idle_s: float) -> Handler:
    """Answer, then close the connection if no next request arrives within `idle_s` (a provider's
    keep-alive timeout), racing the client's next request."""
    async def handle(request: Request, peer: Peer) -> None:
        peer.writer.write(response(echo(request)))
        await peer.writer.drain()
        count = len(peer.requests)
        await asyncio.sleep(idle_s)
        if len(peer.requests) == count:
            peer.writer.close()

    return handle


async def requests_in_a_row(transport: HttpTransport, prov: Provider, count: int, prefix: str,
                            gap_s: Callable[[int], float] = lambda _: 0.0) -> list[str]:
    """Send `count` requests one after the other; the ids of those that did not get their own answer."""
    failed = []
    for n in range(count):
        request_id = f"{prefix}-{n}"
        try:
            if await echoed(transport, prov, request_id) != json.dumps({"id": request_id}).encode():
                failed.append(request_id)
        except TransportError as exc:
            failed.append(f"{request_id}: {exc!r}")
        if gap := gap_s(n):
            await asyncio.sleep(gap)
    return failed


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_provider_that_closes_after_every_answer_costs_no_attempt(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(close_after_each_answer())
    prov = provider(server.base_url, client)
    assert await requests_in_a_row(make_transport(prov), prov, 1000, "closing") == []
    assert len(server.requests) == 1000  # nothing was sent twice to the provider


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_provider_that_closes_idle_connections_costs_no_attempt(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    # Ten clients, each waiting around the provider's keep-alive timeout between its requests, so that
    # many requests are written to a connection the provider is closing at that moment.
    idle_s = 0.02
    server = await serve(close_when_idle(idle_s))
    # A stale connection shows as an EOF or a reset at once, never as silence: a 2 s first-byte timeout
    # still catches a request left hanging on one, and does not fail on the loaded CI machine's stalls
    # of the event loop this fake shares with ten clients (0.3 s did, for 4 of 1,000 requests, once).
    prov = provider(server.base_url, client, timeouts=Timeouts(connect_s=1.0, first_byte_s=2.0, idle_s=2.0))
    transport = make_transport(prov)
    rng = random.Random(1)
    gaps = [[rng.uniform(0.5 * idle_s, 1.5 * idle_s) for _ in range(100)] for _ in range(10)]
    failures = await asyncio.gather(*(requests_in_a_row(transport, prov, 100, f"w{w}", lambda n, w=w: gaps[w][n])
                                      for w in range(10)))
    assert [failure for batch in failures for failure in batch] == []
    assert len(server.requests) == 1000


def close_on_reuse() -> Handler:
    """Answer a connection's first request; close the connection, unanswered, when a second one comes on
    it: the provider's keep-alive timeout ran out just as the client reused it, a race that no check
    before reuse can win. Each such request goes out again, on a fresh connection."""
    async def handle(request: Request, peer: Peer) -> None:
        if len(peer.requests) > 1:
            peer.writer.close()
            return
        peer.writer.write(response())
        await peer.writer.drain()

    return handle


class ResendCounting:
    """A transport that counts the resends its replies (or its attempts' failures) report."""

    def __init__(self, transport: HttpTransport) -> None:
        self._transport = transport
        self.resends = 0

    async def send(self, outgoing: Outgoing) -> Reply:
        try:
            reply = await self._transport.send(outgoing)
        except TransportError as exc:
            self.resends += exc.resent
            raise
        self.resends += reply.resent
        return reply

    async def aclose(self) -> None:
        await self._transport.aclose()


@pytest.mark.parametrize("client", CLIENTS)
async def test_resends_reach_the_providers_resends_metric_and_cost_no_attempt(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    # Through a Router and its Prometheus observer: every resend the transport reports is counted for
    # its provider, once, and none of them is a failed attempt (the breaker and the retries never see it).
    server = await serve(close_on_reuse())
    policy = policy_from_mapping({
        "providers": {"aimo": {"base_url": server.base_url, "http_client": client,
                               "timeouts": {"connect_s": 1.0, "first_byte_s": 2.0, "idle_s": 2.0}}},
        "routes": {"chat": {"targets": [{"provider": "aimo", "model": "m"}]}}})
    transport = ResendCounting(make_transport(policy.providers["aimo"]))
    observer = PrometheusObserver()
    requests = 6
    async with Router(policy, observer=observer, transport=transport) as router:
        for _ in range(requests):
            result = await router.chat({"model": "chat", "messages": [{"role": "user", "content": "hi"}]})
            assert (result.body, result.attempts) == (COMPLETION, 1)
    scrape = Scrape.of(observer.registry)
    assert transport.resends > 0
    assert scrape.get("llm_router_upstream_resends_total", provider="aimo") == transport.resends
    assert scrape.series("llm_router_upstream_attempts_total") == {
        (("outcome", "ok"), ("provider", "aimo"), ("route", "chat")): requests}
    assert len(server.requests) == requests + transport.resends  # each resent request reached the provider twice


# -- answers over a limit -----------------------------------------------------------------------------------

LIMIT = 64 * 1024
_BOMB = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 KiB that inflate to 8 MiB
OVER_LIMIT = [
    Case("a gzip bomb", answer(response(_BOMB, "200 OK", "Content-Encoding: gzip")), failed("invalid_response")),
    Case("a body over the limit", answer(response(b"x" * (LIMIT + 1))), failed("invalid_response")),
    Case("a body over the limit, framed by the connection's end",
         close_after(head("Content-Type: application/json"), b"x" * (LIMIT + 1)), failed("invalid_response")),
    Case("a chunked body over the limit",
         answer(head("Transfer-Encoding: chunked"), *[chunk(b"x" * 4096)] * 17, LAST_CHUNK),
         failed("invalid_response")),
    Case("a stream over the limit", answer(chunked_head(), *[chunk(b"data: " + b"x" * 4000 + b"\n\n")] * 17,
                                           LAST_CHUNK), failed("invalid_response"), stream=True),
    Case("a gzipped stream over the limit",
         answer(chunked_head("Content-Encoding: gzip"), chunk(gzip.compress(b"data: " + b"y" * LIMIT + b"\n\n")),
                LAST_CHUNK), failed("invalid_response"), stream=True),
    Case("a header over 8,190 bytes", answer(head(f"X-Big: {'a' * 8186}", "Content-Length: 0")),
         failed("invalid_response")),
    Case("more than 128 header fields", answer(head(*[f"X-{i}: v" for i in range(129)], "Content-Length: 0")),
         failed("invalid_response")),
    Case("a header line of 1 MiB, never ended", stall_after(b"HTTP/1.1 200 OK\r\nX-Big: ", b"a" * (1 << 20)),
         failed("invalid_response")),
]
AT_THE_LIMIT = [
    Case("a body of exactly the limit", answer(response(b"x" * LIMIT)), ok(b"x" * LIMIT)),
    Case("a gzipped body of exactly the limit", answer(response(gzip.compress(b"z" * LIMIT), "200 OK",
                                                                "Content-Encoding: gzip")), ok(b"z" * LIMIT)),
    Case("128 headers of 8,190 bytes", answer(head(*[f"X-{i:03d}: {'v' * 8185}" for i in range(127)],
                                                        "Content-Length: 2") + b"ok"), ok(b"ok")),
]


@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("case", OVER_LIMIT + AT_THE_LIMIT, ids=[case.name for case in OVER_LIMIT + AT_THE_LIMIT])
async def test_both_clients_hold_an_answer_to_the_same_limits(case: Case, client: str, serve: ServerFactory,
                                                               make_transport: TransportFactory) -> None:
    server = await serve(case.script)
    prov = provider(server.base_url, client, max_response_bytes=LIMIT)
    assert await verdict(make_transport(prov), prov, stream=case.stream) == case.expect


def trickle(*pieces: bytes, gap_s: float) -> Handler:
    async def handle(request: Request, peer: Peer) -> None:
        for piece in pieces:
            peer.writer.write(piece)
            await peer.writer.drain()
            await asyncio.sleep(gap_s)

    return handle


@pytest.mark.slow
@pytest.mark.parametrize("client", CLIENTS)
async def test_idle_s_bounds_each_gap_in_a_body_not_the_whole_body(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    # idle_s is 0.3 s: five pieces 0.15 s apart take 0.6 s in all, and every gap is within it.
    body = response(b"x" * 500)
    pieces = [body[i:i + len(body) // 5 + 1] for i in range(0, len(body), len(body) // 5 + 1)]
    server = await serve(trickle(*pieces, gap_s=TIMEOUTS.idle_s / 2))
    prov = provider(server.base_url, client)
    assert await verdict(make_transport(prov), prov, stream=False) == ok(b"x" * 500)
    server.handler = trickle(pieces[0], pieces[1], gap_s=TIMEOUTS.idle_s * 2)  # then one gap of 0.6 s
    assert await verdict(make_transport(prov), prov, stream=False) == failed("stream_stall")
