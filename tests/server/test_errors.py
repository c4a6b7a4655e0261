"""Every error in the OpenAI shape with a fitting status; no traceback and no provider key, ever."""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from router.errors import RouterError
from router.mock import Hang, Ok, Status, Stream
from router.server.context import ServerContext
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_no_leak, assert_openai_error, bearer, chat_body
from tests.support.policies import (
    CANARY_KEY,
    CLIENT_ENV,
    CLIENT_KEY,
    make_policy,
    provider_block,
    route_block,
    simple_policy,
)

JSON = {"Content-Type": "application/json"}
USER = [{"role": "user", "content": "hi"}]


async def call(http: aiohttp.ClientSession, method: str, url: str, **kwargs) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.request(method, url, **kwargs) as response:
        return response, await response.read()


@pytest.mark.parametrize(("body", "param"), [
    (b"{not json", None),
    (b"", None),
    (b"\xff\xfe\x00garbage", None),
    (b"[1, 2, 3]", None),
    (b'"just a string"', None),
    (b'{"messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "hi"}]}', "model"),
    (b'{"model": "chat"}', "messages"),
    (b'{"model": "chat", "messages": "hi"}', "messages"),
    (b'{"model": "chat", "messages": []}', "messages"),
    (b'{"model": "chat", "messages": [{"content": "no role"}]}', "messages[0]"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "stream"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": 1}', "stream"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}', "max_tokens"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "max_tokens"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": "100"}', "max_tokens"),
    (b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1.5}', "max_tokens"),
    (b'{"model": "chat", "model": "chat", "messages": [{"role": "user", "content": "hi"}]}', "model"),
], ids=lambda value: value[:40].decode("latin-1") if isinstance(value, bytes) else str(value))
async def test_invalid_bodies_are_400_naming_the_parameter(daemon: DaemonFactory, fake_provider, http,
                                                           body: bytes, param: str | None) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, "POST", server.chat_url, data=body, headers=JSON)

    assert response.status == 400
    error = assert_openai_error(raw)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert fake.count == 0


async def test_deeply_nested_json_is_400_not_500(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))
    depth = 50_000
    body = b'{"model": "chat", "messages": [{"role": "user", "content": ' + b"[" * depth + b"]" * depth + b"}]}"

    response, raw = await call(http, "POST", server.chat_url, data=body, headers=JSON)

    assert response.status == 400
    assert_openai_error(raw)
    assert fake.count == 0


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_body_that_does_not_match_its_content_encoding_is_400(daemon: DaemonFactory, fake_provider, http,
                                                                      encoding: str) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, "POST", server.chat_url, data=json.dumps(chat_body()).encode(),
                               headers={**JSON, "Content-Encoding": encoding})

    assert response.status == 400
    assert_openai_error(raw, code="invalid_body")
    assert response.headers.get("Connection", "").lower() == "close"  # the rest of the body is unreadable
    assert fake.count == 0
    response, _ = await call(http, "POST", server.chat_url, json=chat_body())
    assert response.status == 200


async def test_unknown_route_is_404_model_not_found(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body(model="gpt-nonexistent"))

    assert response.status == 404
    error = assert_openai_error(raw, code="model_not_found")
    assert error["param"] == "model" and "gpt-nonexistent" in error["message"]


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/v1/nothing-here", 404),
    ("POST", "/v1/completions", 404),
    ("GET", "/", 404),
    ("GET", "/v1/chat/completions", 405),
    ("PUT", "/v1/chat/completions", 405),
    ("DELETE", "/v1/models", 405),
    ("POST", "/healthz", 405),
])
async def test_unknown_paths_and_wrong_methods_answer_openai_errors(daemon: DaemonFactory, fake_provider, http,
                                                                    method: str, path: str, status: int) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, method, server.url(path))

    assert response.status == status
    assert response.headers["Content-Type"].startswith("application/json")
    assert_openai_error(raw)
    if status == 405:
        assert response.headers["Allow"] == ("POST" if path == "/v1/chat/completions" else "GET,HEAD")


async def test_body_over_max_body_bytes_is_413(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, server={"max_body_bytes": 2048}))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body("x" * 3000))

    assert response.status == 413
    error = assert_openai_error(raw, code="body_too_large")
    assert "2048" in error["message"]
    assert fake.count == 0
    response, _ = await call(http, "POST", server.chat_url, json=chat_body("x" * 1500))
    assert response.status == 200


async def test_client_over_its_rate_is_429_with_retry_after(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(make_policy(
        {"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
        clients=[{"name": "web", "key_env": CLIENT_ENV, "limits": {"requests_per_second": 1, "burst": 2}}]))

    statuses = []
    for _ in range(3):
        response, raw = await call(http, "POST", server.chat_url, json=chat_body(), headers=bearer(CLIENT_KEY))
        statuses.append(response.status)

    assert statuses == [200, 200, 429]
    assert response.headers["Retry-After"] == "1"
    assert assert_openai_error(raw, code="rate_limit_exceeded")["type"] == "rate_limit_error"


async def test_client_over_its_token_rate_is_429(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(make_policy(
        {"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
        clients=[{"name": "web", "key_env": CLIENT_ENV, "limits": {"tokens_per_minute": 1000}}]))

    fake.set_default(Ok(delay_s=0.3))  # the first reservation is still held when the second request comes

    async def ask() -> tuple[aiohttp.ClientResponse, bytes]:
        return await call(http, "POST", server.chat_url, json=chat_body(max_tokens=900), headers=bearer(CLIENT_KEY))

    answers = await asyncio.gather(ask(), ask())

    assert sorted(response.status for response, _ in answers) == [200, 429]
    response, raw = next(answer for answer in answers if answer[0].status == 429)
    assert int(response.headers["Retry-After"]) >= 1
    assert "token" in assert_openai_error(raw)["message"]
    assert fake.count == 1


async def test_every_provider_rate_limited_is_429_with_retry_after(daemon: DaemonFactory, fake_provider,
                                                                    http) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Status.rate_limited("30"))
    server = await daemon(simple_policy(fake, retry={"wait_for_preferred_s": 0}))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 429
    assert 25 <= int(response.headers["Retry-After"]) <= 30
    assert_openai_error(raw)
    assert fake.count == 1
    # A new request is not sent to the throttled provider before its Retry-After.
    response, _ = await call(http, "POST", server.chat_url, json=chat_body())
    assert response.status == 429 and fake.count == 1


async def test_exhausted_provider_quota_is_429_without_sending_a_request(daemon: DaemonFactory, fake_provider,
                                                                          http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake, retry={"wait_for_preferred_s": 0},
                                        provider_fields={"aimo": {"limits": {"requests_per_minute": 1}}}))

    first, _ = await call(http, "POST", server.chat_url, json=chat_body())
    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert first.status == 200
    assert response.status == 429
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert_openai_error(raw, code="rate_limit_exceeded")
    assert fake.count == 1  # limit-aware routing: the second request was never sent


async def test_every_provider_failing_is_502_with_a_summary(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    # A provider in debug mode that answers its crash page: none of it may reach the client.
    fake.set_default(Status(500, body=f'Traceback (most recent call last):\n  File "app.py", line 1\n'
                                      f'KeyError: {CANARY_KEY}'))
    server = await daemon(simple_policy(fake, retry={"max_attempts": 2, "max_attempts_per_target": 2}))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 502
    error = assert_openai_error(raw)  # also: no traceback, no key
    assert "500" in error["message"] and "aimo" in error["message"]
    assert fake.count == 2


async def test_provider_rejecting_our_key_is_a_502_without_echoing_the_key(daemon: DaemonFactory, fake_provider,
                                                                           http) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Status(401, "invalid_api_key", message=f"Incorrect API key provided: {CANARY_KEY}."))
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status in (502, 503)
    assert_openai_error(raw)
    assert fake.count == 1  # a bad key is not retried on the same provider


async def test_deadline_with_a_hanging_provider_is_504(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Hang())
    server = await daemon(simple_policy(fake, route_fields={"deadline_s": 0.4}))

    started = time.monotonic()
    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 504
    assert 0.3 < time.monotonic() - started < 1.5
    assert "in time" in assert_openai_error(raw)["message"]


async def test_provider_content_policy_400_is_passed_through_with_its_message(daemon: DaemonFactory, fake_provider,
                                                                              http) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    primary.set_default(Status.content_policy("violence"))
    server = await daemon(simple_policy(primary, backup))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 400
    error = assert_openai_error(raw, code="content_policy_violation")
    assert error["message"] == "Your request was rejected by the content policy: violence"
    assert (primary.count, backup.count) == (1, 0)  # fatal: not retried, not failed over
    assert response.headers["x-router-provider"] == "primary"


async def test_provider_content_policy_on_a_stream_is_passed_through_before_commit(
        daemon: DaemonFactory, fake_provider, http) -> None:
    primary = await fake_provider("primary")
    primary.set_default(Status.content_policy("self-harm"))
    server = await daemon(simple_policy(primary))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body(stream=True))

    assert response.status == 400
    assert response.headers["Content-Type"].startswith("application/json")
    assert "self-harm" in assert_openai_error(raw, code="content_policy_violation")["message"]


async def test_context_length_exceeded_everywhere_is_400(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Status.context_length(8192))
    server = await daemon(simple_policy(fake))

    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 400
    assert "8192" in assert_openai_error(raw, code="context_length_exceeded")["message"]
    assert fake.count == 1


async def test_a_crash_inside_the_router_is_an_opaque_500(daemon: DaemonFactory, fake_provider, http,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    async def broken_chat(*args, **kwargs):
        raise KeyError("boom")

    monkeypatch.setattr(server.router, "chat", broken_chat)
    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 500
    error = assert_openai_error(raw, code="internal_error")
    assert "boom" not in error["message"]
    monkeypatch.undo()
    response, _ = await call(http, "POST", server.chat_url, json=chat_body())
    assert response.status == 200


async def test_a_crash_in_any_other_endpoint_is_an_opaque_500_too(daemon: DaemonFactory, fake_provider, http,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    def broken_render(self: ServerContext) -> tuple[bytes, str]:
        raise KeyError("boom-metrics")

    monkeypatch.setattr(ServerContext, "render_metrics", broken_render)
    response, raw = await call(http, "GET", server.url("/metrics"))

    assert response.status == 500
    assert "boom" not in assert_openai_error(raw, code="internal_error")["message"]
    response, _ = await call(http, "GET", server.url("/healthz"))
    assert response.status == 200


async def test_router_errors_outside_the_http_range_become_500(daemon: DaemonFactory, fake_provider, http,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    async def closed(*args, **kwargs):
        raise RouterError("router is closed")

    monkeypatch.setattr(server.router, "chat", closed)
    response, raw = await call(http, "POST", server.chat_url, json=chat_body())

    assert response.status == 500
    assert_openai_error(raw)


async def test_no_error_answer_or_log_line_carries_a_traceback_or_the_provider_key(
        daemon: DaemonFactory, fake_provider, http, caplog: pytest.LogCaptureFixture) -> None:
    good, broken = await fake_provider("good", api_key=CANARY_KEY), await fake_provider("broken")
    broken.set_default(Status(500, body=f"Traceback (most recent call last):\n  File \"x.py\"\n{CANARY_KEY}"))
    server = await daemon(make_policy(
        {"good": provider_block(good), "broken": provider_block(broken)},
        {"chat": route_block(("good", "m")), "down": route_block(("broken", "m"), retry={"max_attempts": 1})},
        clients=[{"name": "web", "key_env": CLIENT_ENV, "limits": {"requests_per_second": 0.1, "burst": 3}}],
        server={"max_body_bytes": 2048}))
    auth = bearer(CLIENT_KEY)
    requests = [
        ("POST", server.chat_url, {"data": b"{", "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(), "headers": bearer(CANARY_KEY)}),  # provider key as client key
        ("POST", server.chat_url, {"json": chat_body("x" * 4000), "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(model="nope"), "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(model="down"), "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(stream=True), "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(), "headers": auth}),
        ("POST", server.chat_url, {"json": chat_body(), "headers": auth}),  # over the burst of 3: 429
        ("GET", server.url("/v1/none"), {}),
        ("PATCH", server.chat_url, {}),
        ("GET", server.url("/v1/models"), {"headers": auth}),
        ("GET", server.url("/metrics"), {}),
        ("GET", server.url("/readyz"), {}),
    ]
    statuses = []
    for method, url, kwargs in requests:
        response, raw = await call(http, method, url, **kwargs)
        statuses.append(response.status)
        assert response.status != 500, (method, url, raw)
        assert_no_leak(raw, [f"{k}: {v}" for k, v in response.headers.items()])

    assert statuses == [400, 401, 413, 404, 502, 200, 200, 429, 404, 405, 200, 200, 200]
    assert_no_leak(caplog.text)
    assert CANARY_KEY not in caplog.text
    assert good.hits and all(h.headers_ci["Authorization"] == f"Bearer {CANARY_KEY}" for h in good.hits)


async def test_a_200_that_is_garbage_or_an_error_fails_over_invisibly(daemon: DaemonFactory, fake_provider,
                                                                      http) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    server = await daemon(simple_policy(primary, backup, retry={"max_attempts": 2, "max_attempts_per_target": 1}))
    faults = [Status(200, body=b"<html>maintenance</html>"), Status(200, body=b""),
              Status(200, body=b'{"error": {"message": "overloaded", "code": "server_error"}}'),
              Stream()]  # SSE to a non-streaming request

    for fault in faults:
        primary.script(fault)
        response, raw = await call(http, "POST", server.chat_url, json=chat_body())
        assert response.status == 200, (fault, raw)
        assert response.headers["x-router-provider"] == "backup"
        assert json.loads(raw)["choices"][0]["message"]["content"] == "Hello from backup"
    assert primary.count == backup.count == len(faults)
