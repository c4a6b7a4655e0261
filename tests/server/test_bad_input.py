"""Bad input never takes the daemon down: stalled and truncated bodies, and fuzzed bodies and headers."""

from __future__ import annotations

import asyncio
import json
import re
import time

import aiohttp
import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st

from router.server import handlers
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, chat_body, port_of, read_response, request_head, sse_data
from tests.support.daemon import InProcessDaemon
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block, simple_policy

VALID = json.dumps(chat_body("hello there")).encode()


async def still_serving(http: aiohttp.ClientSession, server: InProcessDaemon) -> None:
    async with http.post(server.chat_url, data=VALID, headers={"Content-Type": "application/json"}) as response:
        body = await response.json()
    assert response.status == 200, body
    async with http.get(server.url("/healthz")) as health:
        assert health.status == 200, (health.status, await health.read(), dict(health.headers))


@pytest.mark.slow
async def test_a_stalled_body_is_answered_408_and_the_server_keeps_serving(
        daemon: DaemonFactory, fake_provider, http, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "BODY_READ_TIMEOUT_S", 0.3)
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
    try:
        started = time.monotonic()
        writer.write(request_head(port_of(server), len(VALID)) + VALID[:20])  # then nothing more
        await writer.drain()

        status, headers, body = await read_response(reader)
        elapsed = time.monotonic() - started
    finally:
        writer.close()

    assert status in (408, 0)  # 408, or at least the connection is closed
    if status == 408:
        assert_openai_error(body)
        assert headers.get("connection", "").lower() == "close"
    assert 0.2 < elapsed < 2.0
    assert fake.count == 0
    await still_serving(http, server)


async def test_many_stalled_bodies_at_once_do_not_block_other_clients(
        daemon: DaemonFactory, fake_provider, http, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handlers, "BODY_READ_TIMEOUT_S", 5.0)
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    writers = []
    try:
        for _ in range(20):
            _, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
            writer.write(request_head(port_of(server), 10_000) + b'{"model": "chat"')
            await writer.drain()
            writers.append(writer)
        started = time.monotonic()
        await still_serving(http, server)
        assert time.monotonic() - started < 1.0
    finally:
        for writer in writers:
            writer.close()


async def test_a_truncated_body_then_close_leaves_the_server_serving(daemon: DaemonFactory, fake_provider,
                                                                     http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    for _ in range(3):
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(request_head(port_of(server), len(VALID) + 500) + VALID)  # promises more than it sends
        await writer.drain()
        writer.write_eof()
        status, _, body = await read_response(reader)
        writer.close()
        assert status in (0, 400), body  # closed, or a 400 for the broken body: never a 500
        if status:
            assert_openai_error(body)

    assert fake.count == 0
    await still_serving(http, server)


async def test_a_client_vanishing_mid_body_leaves_the_server_serving(daemon: DaemonFactory, fake_provider,
                                                                     http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    for _ in range(3):
        _, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(request_head(port_of(server), 4096) + VALID[:10])
        await writer.drain()
        writer.transport.abort()  # RST, no FIN

    await asyncio.sleep(0.05)
    await still_serving(http, server)
    assert fake.count == 1


async def test_malformed_http_is_refused_and_the_server_keeps_serving(daemon: DaemonFactory, fake_provider,
                                                                      http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    garbage = [
        b"GARBAGE\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nZZ\r\nabc\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS ClientHello on the plain port
    ]
    for payload in garbage:
        reader, writer = await asyncio.open_connection("127.0.0.1", port_of(server))
        writer.write(payload)
        await writer.drain()
        status, _, _ = await read_response(reader)
        writer.close()
        assert status in (0, 400), payload

    await still_serving(http, server)


async def test_an_unsupported_content_encoding_is_refused_and_the_server_keeps_serving(
        daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    for encoding in ("br", "zstd", "gzip, gzip", "compress"):
        async with http.post(server.chat_url, data=VALID,
                             headers={"Content-Type": "application/json", "Content-Encoding": encoding}) as response:
            await response.read()
        assert response.status in (200, 400, 415), encoding

    await still_serving(http, server)


# -- fuzzing -----------------------------------------------------------------------------------

ALLOWED = {200, 400, 401, 403, 404, 408, 413, 415, 429, 502, 503, 504}
SAFE_ID = re.compile(r"[A-Za-z0-9._:\-]{1,128}")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)


def mostly(common: st.SearchStrategy, rare: st.SearchStrategy) -> st.SearchStrategy:
    """`common` four times in five: keeps most examples on the path past parsing, into routing."""
    # Index 0 is both hypothesis's favourite draw and its shrink target: make it the common case.
    return st.sampled_from((False, False, False, False, True)).flatmap(lambda is_rare: rare if is_rare else common)


messages = st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool"])},
    optional={"content": st.one_of(st.text(max_size=30), json_values)}), min_size=1, max_size=3)
near_valid = st.fixed_dictionaries(
    {"model": mostly(st.just("chat"), st.one_of(st.text(max_size=20), json_values)),
     "messages": mostly(messages, json_values)},
    optional={"stream": st.one_of(st.booleans(), json_values), "max_tokens": st.one_of(st.integers(-5, 9000),
                                                                                      json_values),
              "temperature": json_values, "tools": json_values, "metadata": json_values, "x_vendor": json_values,
              "stream_options": json_values})


def dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


bodies = mostly(near_valid.map(dumps), st.one_of(st.binary(max_size=300), json_values.map(dumps)))
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=200)
authorization = mostly(st.just(f"Bearer {CLIENT_KEY}"), header_text)
headers = st.fixed_dictionaries({"Authorization": authorization}, optional={
    "X-Request-ID": header_text,
    "Content-Type": st.one_of(st.sampled_from(["application/json", "text/plain", "", "multipart/form-data; b=x",
                                               "application/json; charset=latin-1"]), header_text),
    "Content-Encoding": st.sampled_from(["identity", "identity", "gzip", "deflate"]),
    "Accept": header_text,
    "Cookie": header_text,
    "X-Forwarded-For": header_text,
})


@pytest.fixture
async def fuzz_target(daemon: DaemonFactory, fake_provider) -> tuple[InProcessDaemon, object]:
    fake = await fake_provider("aimo", strict=False)
    policy = make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
                         clients=[{"name": "web", "key_env": CLIENT_ENV}])
    return await daemon(policy), fake


# No explain phase: its look at the `json_values` lambdas raises a HypothesisDeprecationWarning (an error
# here) that replaced the falsifying example in the report.
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
          phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink])
@given(body=bodies, sent_headers=headers)
async def test_fuzzed_requests_get_an_openai_answer_never_a_500(fuzz_target, http, body: bytes,
                                                                sent_headers: dict[str, str]) -> None:
    server, _ = fuzz_target
    async with http.post(server.chat_url, data=body, headers=sent_headers) as response:
        raw = await response.read()

    event(f"status {response.status}")
    assert response.status in ALLOWED, (response.status, raw)
    if sent_headers.get("Content-Encoding") in ("gzip", "deflate") and response.status == 400 \
            and response.headers["Content-Type"].startswith("text/plain"):
        # aiohttp's HTTP parser itself rejects some undecodable bodies (e.g. a 1-byte "deflate" body
        # fails in its feed_eof) and answers plain text before the app runs: not the router's answer.
        event("aiohttp protocol-level 400")
        return
    assert SAFE_ID.fullmatch(response.headers["x-request-id"])
    if response.status == 200 and response.headers["Content-Type"].startswith("text/event-stream"):
        assert sse_data(raw)[-1] == "[DONE]"
    elif response.status == 200:
        assert "choices" in json.loads(raw)
    else:
        assert_openai_error(raw)
    async with http.get(server.url("/healthz")) as health:
        assert health.status == 200, (health.status, await health.read(), dict(health.headers))
