"""llhttp's response test vectors, as answers from a provider, through both upstream clients.

Each vector (tests/data/corpora, llhttp test/response/*.md) is what a loopback provider writes in
answer to a chat request; then it either closes the connection or keeps it open. The answer goes
through `HttpTransport` with `http_client: fast` and with `http_client: aiohttp`. Then a second
request goes to the same provider, which answers it cleanly.

- Both clients reach the same outcome: the same reply (status and body), or a failure the engine
  acts on the same way (retry, fail over). Only the transport's own errors escape.
- Neither accepts an answer that llhttp, with the leniencies aiohttp enables (and the fast client
  copies), refuses outright.
- The second request always gets its own clean answer: nothing of a vector survives in the pool.
"""

from __future__ import annotations

import asyncio
import time
from types import MappingProxyType

import httptools
import pytest

from router.engine.classify import classify_exception, classify_status
from router.policy.model import Provider, Timeouts
from router.upstream.errors import TransportError
from router.upstream.transport import HttpTransport, Outgoing
from tests.support.corpora import Vector, llhttp_vectors
from tests.support.wire_server import COMPLETION, Peer, Request, ScriptedServer, response

pytestmark = pytest.mark.slow  # ~80 vectors, two clients, two endings, some waiting out an idle timeout

BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'
TIMEOUTS = Timeouts(connect_s=1.0, first_byte_s=1.0, idle_s=0.5)
CLEAN = ("reply", 200, COMPLETION)

Outcome = tuple[object, ...]


async def ask(transport: HttpTransport, provider: Provider) -> Outcome:
    """("reply", status, body), or ("failed", the engine's action) for a transport failure."""
    outgoing = Outgoing(provider=provider, body=BODY, request_id="corpus-1", stream=False,
                        deadline=time.monotonic() + 10.0)
    try:
        reply = await transport.send(outgoing)
        try:
            return ("reply", reply.status, await reply.read())
        finally:
            reply.close()
    except TransportError as exc:
        return ("failed", classify_exception(exc).action.value)


def lenient_llhttp_refuses(data: bytes) -> bool:
    """llhttp, with aiohttp's response leniencies, finds no complete answer before an error."""
    complete = [0]

    class Count:
        def on_message_complete(self) -> None:
            complete[0] += 1

    parser = httptools.HttpResponseParser(Count())
    parser.set_dangerous_leniencies(lenient_headers=True, lenient_optional_cr_before_lf=True,
                                    lenient_spaces_after_chunk_size=True)
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        return False
    except httptools.HttpParserError:
        return complete[0] == 0
    return False


async def run(vector: Vector, client: str, *, then_close: bool) -> tuple[Outcome, Outcome]:
    """The vector as the answer to a first request, a clean answer to the second."""
    answered = [0]

    async def handle(request: Request, peer: Peer) -> None:
        answered[0] += 1
        peer.writer.write(vector.data if answered[0] == 1 else response())
        await peer.writer.drain()
        if answered[0] == 1 and then_close:
            peer.writer.close()

    server = ScriptedServer(handle)
    await server.start()
    provider = Provider("aimo", server.base_url, api_key="sk-corpus-key-0123", headers=MappingProxyType({}),
                        timeouts=TIMEOUTS, http_client=client, max_response_bytes=1 << 20)
    transport = HttpTransport({"aimo": provider})
    try:
        return await ask(transport, provider), await ask(transport, provider)
    finally:
        await transport.aclose()
        await server.close()


@pytest.mark.parametrize("then_close", [True, False], ids=["then closes", "then stays open"])
async def test_llhttp_response_vectors_through_both_clients(then_close: bool) -> None:
    vectors = llhttp_vectors("response")
    gate = asyncio.Semaphore(16)

    async def both(vector: Vector) -> tuple[tuple[Outcome, Outcome], tuple[Outcome, Outcome]]:
        async with gate:
            return await run(vector, "fast", then_close=then_close), await run(vector, "aiohttp",
                                                                                then_close=then_close)

    results = await asyncio.gather(*(both(vector) for vector in vectors))
    problems: list[str] = []
    for vector, ((fast, fast_next), (aio, aio_next)) in zip(vectors, results, strict=True):
        where = f"{vector.id} {vector.data[:60]!r}: fast {fast}, aiohttp {aio}"
        if fast != aio:
            problems.append(f"the clients disagree: {where}")
        if lenient_llhttp_refuses(vector.data) and (fast[0] == "reply" or aio[0] == "reply"):
            problems.append(f"accepted an answer llhttp refuses: {where}")
        if fast_next != CLEAN or aio_next != CLEAN:
            problems.append(f"the next request got {fast_next} (fast), {aio_next} (aiohttp): {vector.id}")
    assert problems == []
    # Not vacuous: the corpus holds answers that are accepted, refused, and framed every way.
    outcomes = {fast[0] for (fast, _), _ in results}
    assert outcomes == {"reply", "failed"}


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_bytes_after_an_answer_that_closes_the_connection_fail_the_attempt(client: str) -> None:
    # From the corpus (response/connection.md, "keep-alive disabled, content-length"): a Content-Length of
    # 5 and 36 bytes after the head. The fast client returned the first five as a complete answer; aiohttp
    # and llhttp's strict mode refuse bytes after an answer that closes the connection.
    vector = next(v for v in llhttp_vectors("response")
                  if v.name == "HTTP/1.1 with keep-alive disabled, content-length")
    first, following = await run(vector, client, then_close=True)
    assert first == ("failed", "retry") and following == CLEAN


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
@pytest.mark.parametrize("name", ["multiple transfer-encoding where chunked is not the last one",
                                  "chunkedchunked transfer-encoding does not enable chunked enconding"])
async def test_a_transfer_encoding_not_ending_in_chunked_frames_the_body_by_the_connection_end(
        client: str, name: str) -> None:
    # RFC 9112, section 6.3: the fast client read `chunked, identity` as chunked and failed the answer.
    vector = next(v for v in llhttp_vectors("response") if v.name == name)
    first, _ = await run(vector, client, then_close=True)
    assert first[:2] == ("reply", 200) and first[2] in (b"World", b"2\r\nOK\r\n0\r\n\r\n")


@pytest.mark.parametrize("client", ["fast", "aiohttp"])
async def test_a_101_is_an_answer_whose_connection_is_not_reused(client: str) -> None:
    vector = next(v for v in llhttp_vectors("response")
                  if v.name == "HTTP 101 response with Upgrade and Content-Length header")
    first, following = await run(vector, client, then_close=False)
    assert first == ("reply", 101, b"") and following == CLEAN
    verdict = classify_status(101, {}, b"", now_wall=0.0)
    assert verdict.action.value == "failover"  # what the engine then does with it
