"""HTTP front fuzzing beyond bodies: any method, path and headers, raw byte-level damage, and the real process.

test_bad_input.py fuzzes chat bodies and a few headers. Here:

- any method on any path with arbitrary (valid-token) header names and values,
  hop-by-hop and framing headers included: always an OpenAI error JSON or a
  success, never a 500;
- a valid raw request with random bytes inserted, deleted or overwritten
  anywhere (request line, headers, body): an OpenAI answer, aiohttp's own plain
  400 for a request it cannot parse (no traceback), or a closed connection;
- both against the `router serve` process itself, which must keep serving and
  log no traceback.
"""

from __future__ import annotations

import asyncio
import json
import re

import aiohttp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.server import handlers
from tests.server.conftest import CliFactory, DaemonFactory
from tests.server.helpers import assert_no_leak, assert_openai_error, chat_body, sse_data
from tests.support.daemon import InProcessDaemon
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, policy_text, provider_block, route_block

VALID = json.dumps(chat_body("fuzz")).encode()
OK_STATUSES = {200, 400, 401, 403, 404, 405, 408, 413, 415, 417, 429, 502, 503, 504}
# How long a raw exchange waits for an answer: the in-process daemon's body timeout is cut to 0.1 s,
# so only a request the damage left incomplete (no header end) waits this long.
ANSWER_WAIT_S = 1.0
TOKEN = st.text(st.sampled_from("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
                min_size=1, max_size=20)
VALUE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=80)
SPECIAL_HEADERS = st.sampled_from([
    "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade", "Proxy-Authorization", "Proxy-Authenticate", "Cookie",
    "Expect", "Content-Encoding", "Content-Type", "Accept", "Accept-Encoding", "X-Request-ID", "Authorization",
    "Host", "Range", "If-None-Match", "Origin", "X-HTTP-Method-Override", "Forwarded", "X-Forwarded-For",
])
CHAT = "/v1/chat/completions"


def mostly(common: st.SearchStrategy[object], rare: st.SearchStrategy[object]) -> st.SearchStrategy[object]:
    """`common` three times in four (index 0, hypothesis's shrink target, is the common case)."""
    return st.sampled_from((False, False, False, True)).flatmap(lambda is_rare: rare if is_rare else common)


# Most examples are a POST with a chat body to the chat endpoint, so they get past routing into the router.
PATHS = mostly(st.just(CHAT), st.sampled_from([
    "/v1/models", "/healthz", "/readyz", "/metrics", "/", "/v1", "/v1/chat/completions/", "//v1/chat/completions",
    "/v1/../metrics", "/v1/chat/completions?x=1", "/v1/embeddings", "/%2e%2e/%2e%2e/etc/passwd",
    "/v1/chat/completions;a=b"]) | TOKEN.map(lambda t: "/" + t))
METHODS = mostly(st.just("POST"), st.sampled_from(["GET", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE",
                                                   "PROPFIND", "post"]))
BODIES = mostly(st.sampled_from([VALID, json.dumps(chat_body(stream=True)).encode()]), st.sampled_from(
    [b"", b"{", b"null", b"[]", json.dumps(chat_body(model="nope")).encode()]) | st.binary(max_size=200))
HEADERS = st.dictionaries(SPECIAL_HEADERS | TOKEN, VALUE | st.sampled_from(
    ["close", "keep-alive, X-Foo", "100-continue", "gzip", "chunked", "h2c", "websocket", "bytes=0-1",
     "application/json", "text/event-stream", f"Bearer {CLIENT_KEY}", "Bearer", "*/*"]), max_size=6)


OUR_ROUTES = {("POST", "/v1/chat/completions"), *(("GET", path) for path in ("/v1/models", "/healthz", "/readyz",
                                                                              "/metrics"))}


def check_answer(method: str, path: str, status: int, headers: dict[str, str], body: bytes) -> None:
    """An OpenAI-compatible answer; or aiohttp's own plain text for a request it could not parse (400) or
    an unknown `Expect` on a path or method the router does not serve (417), before any app code runs."""
    assert status != 500, body
    assert status in OK_STATUSES, (status, body[:300])
    assert_no_leak(body, [f"{k}: {v}" for k, v in headers.items()])
    content_type = headers.get("content-type", "")
    if method.upper() == "HEAD" or (status == 200 and not body):
        return
    if content_type.startswith("text/plain") and status == 400:
        event("aiohttp protocol-level 400")
        return
    if content_type.startswith("text/plain") and status == 417:
        assert (method.upper(), path.split("?")[0]) not in OUR_ROUTES, (method, path)
        event("aiohttp 417 outside the router's routes")
        return
    if status == 200 and content_type.startswith("text/event-stream"):
        assert sse_data(body)[-1] == "[DONE]"
    elif status == 200 and content_type.startswith("application/json"):
        json.loads(body)
    elif status == 200:
        assert content_type.startswith("text/plain")  # /metrics
    else:
        assert_openai_error(body)


class Front:
    """The daemon under fuzz, with a short repr (hypothesis prints it with a failing example)."""

    def __init__(self, daemon: InProcessDaemon) -> None:
        self.base_url = daemon.base_url
        self.port = int(daemon.base_url.rsplit(":", 1)[1])

    def url(self, path: str) -> str:
        return f"{self.base_url}{path}"

    def __repr__(self) -> str:
        return f"Front({self.base_url})"


@pytest.fixture
async def front(daemon: DaemonFactory, fake_provider, monkeypatch: pytest.MonkeyPatch) -> Front:
    monkeypatch.setattr(handlers, "BODY_READ_TIMEOUT_S", 0.1)
    fake = await fake_provider("aimo", strict=False)
    policy = make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
                         clients=[{"name": "web", "key_env": CLIENT_ENV}])
    return Front(await daemon(policy))


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(method=METHODS, path=PATHS, headers=HEADERS, body=BODIES, keyed=st.booleans())
async def test_any_method_path_and_headers_get_an_openai_answer(front: Front, http: aiohttp.ClientSession,
                                                                method: str, path: str, headers: dict[str, str],
                                                                body: bytes, keyed: bool) -> None:
    if keyed:
        headers = {**headers, "Authorization": f"Bearer {CLIENT_KEY}"}
    try:
        async with http.request(method, front.url(path), data=body, headers=headers,
                                skip_auto_headers=("Content-Type",)) as response:
            raw = await response.read()
    except (aiohttp.ClientError, ValueError) as exc:  # refused by the client library itself, or the server hung up
        event(f"client-side {type(exc).__name__}")
        return
    event(f"status {response.status}")
    check_answer(method, path, response.status, {k.lower(): v for k, v in response.headers.items()}, raw)
    async with http.get(front.url("/healthz")) as health:
        assert health.status == 200


def raw_valid_request(host: str) -> bytes:
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {CLIENT_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(VALID)}\r\nConnection: close\r\n\r\n"
            ).encode() + VALID


@st.composite
def damaged(draw: st.DrawFn, request: bytes) -> bytes:
    """`request` with 1-4 random insertions, deletions or overwrites: anywhere, only past the request line,
    or only in the body (then, half the time, with Content-Length updated so the damage reaches the router
    rather than aiohttp's parser)."""
    head_end = request.index(b"\r\n\r\n") + 4
    # Where header values start and end: damage there (stray bytes, non-UTF-8) is what reaches the
    # router's own header handling (keys, request ids) instead of failing in aiohttp's parser.
    values = [(m.start(1), m.end(1)) for m in re.finditer(rb"\r\n[^:\r\n]+: ([^\r\n]*)", request[:head_end])]
    # The body and the header values first: hypothesis favours the first choices, and damage
    # elsewhere mostly ends at aiohttp's parser.
    region = draw(st.sampled_from(["body", "header value", "body", "header value", "past the request line",
                                   "anywhere"]))
    event(f"damage in {region}")
    low, high = {"body": (head_end, len(request)), "past the request line": (request.index(b"\r\n") + 2,
                                                                            len(request)),
                 "anywhere": (0, len(request))}.get(region) or draw(st.sampled_from(values))
    data = bytearray(request)
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(min(low, len(data)), min(high, len(data))))
        action = draw(st.sampled_from(["insert", "delete", "overwrite"]))
        piece = draw(st.sampled_from(
            [b"\x80", b"\xc3\x28", b"\xed\xa0\x80", b"\xff\xfe", b"\xe2\x82\xac", b"\r\n", b"\n", b"\r", b":", b" ",
             b"\0", b"\x7f", b"\t", b"\r\n\r\n", b"Transfer-Encoding: chunked\r\n", b"Content-Length: 9999\r\n",
             b"Content-Length: -1\r\n", b"Expect: 100-continue\r\n"]) | st.binary(min_size=1, max_size=6))
        if action == "insert":
            data[at:at] = piece
        elif action == "delete":
            del data[at:at + len(piece)]
        else:
            data[at:at + len(piece)] = piece
    if region == "body" and draw(st.booleans()):
        body = bytes(data[head_end:])
        return re.sub(rb"Content-Length: \d+", b"Content-Length: %d" % len(body), bytes(data[:head_end])) + body
    return bytes(data)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    while head.startswith(b"HTTP/1.1 1"):  # an interim answer (100 Continue): the real one follows
        head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        body = b""
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
    else:
        body = await reader.read()
    return int(status_line.split()[1]), headers, body


async def exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """Send raw bytes and read one answer. None when the server closed without one, or is still waiting
    for bytes the damage removed (a header end, a body shorter than its Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(ANSWER_WAIT_S):
            return await read_answer(reader)
    except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
        return None
    finally:
        writer.close()


async def fuzz_raw(port: int, request: bytes) -> None:
    result = await exchange(port, request)
    if result is None:
        event("no answer: closed, or waiting for the bytes the damage removed")
        return
    status, headers, body = result
    event(f"raw status {status}")
    # The damage may have changed the method or path; a plain 417 is then checked loosely.
    check_answer("?", "?", status, headers, body)


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
async def test_a_damaged_raw_request_never_gets_a_500_or_a_traceback(front: Front, http: aiohttp.ClientSession,
                                                                     data: st.DataObject) -> None:
    await fuzz_raw(front.port, data.draw(damaged(raw_valid_request(f"127.0.0.1:{front.port}")), label="request"))
    async with http.get(front.url("/healthz")) as health:
        assert health.status == 200


@pytest.fixture
async def process(cli_daemon: CliFactory, fake_provider) -> tuple[int, aiohttp.ClientSession]:
    fake = await fake_provider("aimo", strict=False)
    text = policy_text({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
                       clients=[{"name": "web", "key_env": CLIENT_ENV}])
    return (await cli_daemon(text, "--log-level", "debug")).port, fake


@settings(max_examples=40, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.slow
async def test_the_router_process_keeps_serving_whatever_it_is_sent(process, http: aiohttp.ClientSession,
                                                                   data: st.DataObject) -> None:
    port, _ = process
    if data.draw(st.booleans(), label="raw"):
        await fuzz_raw(port, data.draw(damaged(raw_valid_request(f"127.0.0.1:{port}")), label="request"))
    else:
        method, path = data.draw(METHODS, label="method"), data.draw(PATHS, label="path")
        headers, body = data.draw(HEADERS, label="headers"), data.draw(BODIES, label="body")
        try:
            async with http.request(method, f"http://127.0.0.1:{port}{path}", data=body, headers=headers,
                                    skip_auto_headers=("Content-Type",)) as response:
                raw = await response.read()
        except (aiohttp.ClientError, ValueError):
            return
        check_answer(method, path, response.status, {k.lower(): v for k, v in response.headers.items()}, raw)
    async with http.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=VALID,
                         headers={"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
                         ) as response:
        assert response.status == 200  # still serving, and still right
