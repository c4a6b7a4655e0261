"""Public corpora of malformed and ambiguous requests, against the daemon (tests/data/corpora/README.md).

Two corpora, used as data:
- llhttp's request test vectors, each with llhttp's own strict verdict (how many complete requests,
  and whether parsing failed);
- defparam/smuggler's Transfer-Encoding mutations, built into CL.TE and TE.CL request-smuggling
  payloads that hide a valid chat request.

Every input goes, over a raw socket, to the daemon as `router serve` runs it (the fast front, which
hands what it does not serve to aiohttp) and to the same app behind aiohttp's own TCPSite: the
reference. Both paths are exercised: the fast front's own request line, and others that it hands
over at once. The daemon must never serve more requests than llhttp's strict reading holds, never
answer a 5xx, never hang, close after a malformed request, never let a hidden request reach the
provider, and answer exactly what the reference answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator, Sequence

import httptools
import pytest

from router.mock import FakeProvider
from tests.server.conftest import DaemonFactory
from tests.server.helpers import port_of
from tests.support.corpora import Gadget, Vector, llhttp_vectors, smuggling_gadgets
from tests.support.daemon import InProcessDaemon
from tests.support.policies import simple_policy
from tests.support.raw_http import Conversation, converse

pytestmark = pytest.mark.slow  # thousands of connections: seconds, not milliseconds

CHAT_LINE = b"POST /v1/chat/completions HTTP/1.1"
HANDED_OVER_LINE = b"POST /v1/chat/completions?via=aiohttp HTTP/1.1"  # the same route, not the fast front's line
HIDDEN_BODY = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "smuggled"}]}).encode()
HIDDEN = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n%b" % (len(HIDDEN_BODY), HIDDEN_BODY))


def llhttp_reads(kind: str, data: bytes) -> tuple[int, bool]:
    """httptools (llhttp's Python binding, strict by default): complete messages, and whether it failed."""
    complete = [0]

    class Count:
        def on_message_complete(self) -> None:
            complete[0] += 1

    parser = (httptools.HttpRequestParser if kind == "request" else httptools.HttpResponseParser)(Count())
    try:
        parser.feed_data(data)
    except httptools.HttpParserUpgrade:
        pass
    except httptools.HttpParserError:
        return complete[0], True
    return complete[0], False


@pytest.mark.parametrize("kind", ["request", "response"])
def test_the_vendored_corpus_reads_as_llhttp_reads_it(kind: str) -> None:
    # The loader (tests/support/corpora.py) turns each vector into the bytes llhttp's runner feeds; llhttp
    # itself (through httptools) must then reach the verdict its log records. A decoding slip (a lost
    # CRLF, a wrong escape) would make every later assertion about the corpus meaningless.
    vectors = [vector for vector in llhttp_vectors(kind) if vector.strict]
    assert len(vectors) > 70 and sum(vector.error for vector in vectors) > 20
    disagreements = [vector.id for vector in vectors
                     if llhttp_reads(kind, vector.data) != (vector.messages, vector.error)]
    assert disagreements == []


def _first_line_end(data: bytes) -> tuple[int, int]:
    start = 0
    while data.startswith(b"\r\n", start):  # llhttp skips empty lines before a request line
        start += 2
    return start, data.find(b"\r\n", start)


def with_host(data: bytes) -> bytes:
    """The vector with a Host header after its request line, if it has none: most vectors omit it, and
    aiohttp refuses an HTTP/1.1 request without one before it looks at what the vector is about."""
    _, end = _first_line_end(data)
    if end < 0 or b"\r\nhost:" in data.split(b"\r\n\r\n", 1)[0].lower():
        return data
    return data[:end] + b"\r\nHost: corpus.test" + data[end:]


def as_chat(data: bytes) -> bytes:
    """The vector's first request line replaced by the fast front's own: its headers and body reach the
    fast front's recogniser instead of going to aiohttp on the request line."""
    start, end = _first_line_end(data)
    return data if end < 0 else data[:start] + CHAT_LINE + data[end:]


Check = Callable[[Conversation, Conversation], list[str]]  # (ours, the reference's) -> problems


async def check_all(ours: InProcessDaemon, reference: InProcessDaemon,
                    cases: Sequence[tuple[bytes, Check]]) -> list[str]:
    """Each case's input to both daemons, many at once, and its check on the pair of conversations.

    A conversation ends when the server closes, or after a quiet spell: a heuristic, and on a loaded
    machine an answer can come late. So a pair that fails its check is sent again, alone and with
    patience, and only what fails that calm re-run is a problem."""
    gate = asyncio.Semaphore(24)

    async def pair(data: bytes, quiet_s: float) -> tuple[Conversation, Conversation]:
        async with gate:
            return (await converse(port_of(ours), data, quiet_s=quiet_s),
                    await converse(port_of(reference), data, quiet_s=quiet_s))

    first = await asyncio.gather(*(pair(data, 0.25) for data, _ in cases))
    problems: list[str] = []
    for (data, check), talks in zip(cases, first, strict=True):
        if check(*talks):
            ours_talk, reference_talk = await pair(data, 2.0)
            problems += [f"{problem}: {data[:70]!r}: {ours_talk}, aiohttp alone: {reference_talk}"
                         for problem in check(ours_talk, reference_talk)]
    return problems


def refusals_agree(ours: Conversation, reference: Conversation) -> bool:
    """The same requests served, the same first answer, the same ending. (aiohttp reads pipelined requests
    ahead: when a later one is malformed it may close without answering it, where the fast front, one
    request at a time, hands that one to aiohttp, which answers it with its own 400.)"""
    served = [status for status in ours.statuses if status < 400]
    return (served == [status for status in reference.statuses if status < 400]
            and ours.statuses[:1] == reference.statuses[:1] and ours.closed == reference.closed)


async def still_serving(server: InProcessDaemon, fake: FakeProvider) -> None:
    body = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "after"}]}).encode()
    hits = fake.total_hits
    talk = await converse(port_of(server), b"%b\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                          b"Connection: close\r\n\r\n%b" % (CHAT_LINE, len(body), body))
    assert talk.statuses == (200,) and fake.total_hits == hits + 1


@pytest.fixture
async def daemons(daemon: DaemonFactory, fake_provider) -> tuple[InProcessDaemon, InProcessDaemon, FakeProvider]:
    fake = await fake_provider("aimo")
    policy = simple_policy(fake)
    return await daemon(policy), await daemon(policy, front=False), fake


@pytest.fixture(autouse=True)
def quiet_aiohttp_server_log() -> Iterator[None]:
    # As `router serve` does (server/main.py): aiohttp logs a traceback for every malformed request, and
    # formatting thousands of them would slow the daemons down.
    logger = logging.getLogger("aiohttp.server")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("form", ["published", "with a Host", "as a chat request"])
async def test_llhttp_request_vectors(daemons: tuple[InProcessDaemon, InProcessDaemon, FakeProvider],
                                      form: str) -> None:
    ours, reference, fake = daemons
    vectors: list[Vector] = llhttp_vectors("request")
    change = {"published": lambda data: data, "with a Host": with_host,
              "as a chat request": lambda data: as_chat(with_host(data))}[form]

    def check_of(vector: Vector) -> Check:
        def check(talk: Conversation, reference_talk: Conversation) -> list[str]:
            found = []
            if any(status >= 500 or status < 0 for status in talk.statuses):
                found.append("a 5xx or garbage")
            if not refusals_agree(talk, reference_talk):
                found.append("differs from aiohttp alone")
            if form == "as a chat request":
                if talk.served:
                    found.append("served a request that is no chat request")
            elif vector.strict:
                if talk.served > vector.messages:
                    found.append(f"served more than llhttp's {vector.messages} complete requests")
                if vector.error and not talk.closed:
                    found.append("kept a connection open after a malformed request")
            return [f"{vector.id}: {problem}" for problem in found]

        return check

    problems = await check_all(ours, reference, [(change(vector.data), check_of(vector)) for vector in vectors])
    assert problems == []
    assert fake.total_hits == 0
    await still_serving(ours, fake)


def smuggling_payload(line: bytes, gadget: bytes, shape: str) -> bytes:
    """`gadget` where `Transfer-Encoding: chunked` would be, beside a Content-Length; the body hides a valid
    chat request that one of the two framings would read as the next request (CL.TE: after an empty
    chunked body; TE.CL: after the chunk-size line that Content-Length covers)."""
    if shape == "CL.TE":
        body = b"0\r\n\r\n" + HIDDEN
        length = len(body)
    else:
        size = b"%x\r\n" % len(HIDDEN)
        body = size + HIDDEN + b"\r\n0\r\n\r\n"
        length = len(size)
    return (line + b"\r\n" + gadget + b"\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % length + body)


@pytest.mark.parametrize("shape", ["CL.TE", "TE.CL"])
async def test_request_smuggling_mutations_never_reach_the_provider(
        daemons: tuple[InProcessDaemon, InProcessDaemon, FakeProvider], shape: str) -> None:
    ours, reference, fake = daemons
    gadgets = smuggling_gadgets()
    assert len(gadgets) > 2500

    def check_of(line: bytes, gadget: Gadget) -> Check:
        def check(talk: Conversation, reference_talk: Conversation) -> list[str]:
            found = []
            # Neither framing makes the outer body a chat request, so every answer is a refusal.
            if talk.statuses[:1] != (400,) or talk.served:
                found.append("not refused")
            if not refusals_agree(talk, reference_talk):
                found.append("differs from aiohttp alone")
            return [f"{line.decode()} {gadget.name} {gadget.lines!r}: {problem}" for problem in found]

        return check

    problems = await check_all(ours, reference, [(smuggling_payload(line, gadget.lines, shape), check_of(line, gadget))
                                                 for line in (CHAT_LINE, HANDED_OVER_LINE) for gadget in gadgets])
    assert problems == []
    assert fake.total_hits == 0, "a hidden request reached the provider"
    await still_serving(ours, fake)


async def test_an_underscored_framing_header_is_refused_and_the_connection_closed(
        daemons: tuple[InProcessDaemon, InProcessDaemon, FakeProvider]) -> None:
    # The corpus found it: `Transfer_Encoding: chunked` means nothing to aiohttp, so the fast front framed
    # the TE.CL payload by its Content-Length and served the hidden chat request behind it (a 200 from the
    # provider), where a proxy mapping `_` to `-` would have read one request. It is now refused on both
    # paths, the request pipelined behind it is never read, and the provider sees nothing.
    # Without the chunked body's last chunk, the hidden request is a whole request behind the outer one
    # (with it, aiohttp refuses the `0` line as a malformed third request and drops what it read ahead,
    # so that form alone would pass without the refusal).
    ours, _, fake = daemons
    for line in (CHAT_LINE, HANDED_OVER_LINE, b"GET /v1/models HTTP/1.1"):
        for gadget in (b"Transfer_Encoding: chunked", b"content_length: 4"):
            payload = smuggling_payload(line, gadget, "TE.CL")
            for data in (payload, payload.removesuffix(b"\r\n0\r\n\r\n")):
                talk = await converse(port_of(ours), data)
                assert talk == Conversation((400,), closed=True), (line, gadget, data[-20:])
    assert fake.total_hits == 0
