"""/v1/models, /healthz, /readyz (and draining), /metrics."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp
from openai import AsyncOpenAI

from router import __version__
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, bearer, chat_body
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block, simple_policy

BATCH_KEY = "batch-key-0001"


def three_route_policy(fake, *, clients=None):
    return make_policy({"aimo": provider_block(fake)},
                       {"chat": route_block(("aimo", "a")), "batch": route_block(("aimo", "b")),
                        "*:deepseek-chat-v3": route_block(("aimo", "{model}"))},
                       **({"clients": clients} if clients is not None else {}))


async def model_ids(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> list[str]:
    async with http.get(url, headers=headers or {}) as response:
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "list"
    assert all(item["object"] == "model" for item in body["data"])
    return [item["id"] for item in body["data"]]


async def test_models_lists_every_route_in_open_mode(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake))

    assert await model_ids(http, server.url("/v1/models")) == ["chat", "batch", "*:deepseek-chat-v3"]


async def test_models_lists_only_the_routes_the_client_may_use(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake, clients=[
        {"name": "web", "key_env": CLIENT_ENV, "routes": ["chat"]},
        {"name": "batch", "key_sha256": hashlib.sha256(BATCH_KEY.encode()).hexdigest()}]))

    assert await model_ids(http, server.url("/v1/models"), bearer(CLIENT_KEY)) == ["chat"]
    assert await model_ids(http, server.url("/v1/models"), bearer(BATCH_KEY)) == [
        "chat", "batch", "*:deepseek-chat-v3"]
    async with http.get(server.url("/v1/models"), headers=bearer("wrong")) as response:
        assert response.status == 401
        assert_openai_error(await response.read(), code="invalid_api_key")


async def test_models_through_the_openai_sdk(daemon: DaemonFactory, fake_provider) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake, clients=[{"name": "web", "key_env": CLIENT_ENV,
                                                             "routes": ["chat", "batch"]}]))

    async with AsyncOpenAI(base_url=server.v1, api_key=CLIENT_KEY, max_retries=0) as client:
        listed = [model.id async for model in client.models.list()]

    assert listed == ["chat", "batch"]


async def test_healthz_answers_200(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake, clients=[{"name": "web", "key_env": CLIENT_ENV}]))

    async with http.get(server.url("/healthz")) as response:  # no key needed to probe
        assert response.status == 200
        assert (await response.json())["status"] == "ok"


async def test_readyz_is_200_then_503_while_draining(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake))

    async with http.get(server.url("/readyz")) as response:
        assert response.status == 200
        assert (await response.json())["status"] == "ready"
    server.context.draining = True
    async with http.get(server.url("/readyz")) as response:
        assert response.status == 503
        assert (await response.json())["status"] == "draining"
    async with http.get(server.url("/healthz")) as response:
        assert response.status == 200  # alive, just not taking new work


async def test_new_chat_requests_while_draining_get_503_with_retry_after(daemon: DaemonFactory, fake_provider,
                                                                        http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake))
    server.context.draining = True

    for body in (chat_body(), chat_body(stream=True)):
        async with http.post(server.chat_url, json=body) as response:
            raw = await response.read()
        assert response.status == 503
        assert response.headers["Retry-After"] == "1"
        assert_openai_error(raw, code="draining")
    assert fake.count == 0


async def test_metrics_answers_prometheus_text_with_build_info(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(three_route_policy(fake))
    async with http.post(server.chat_url, json=chat_body()) as response:
        assert response.status == 200

    async with http.get(server.url("/metrics")) as response:
        text = await response.text()

    assert response.status == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE llm_router_build_info gauge" in text
    assert f'llm_router_build_info{{version="{__version__}"}} 1.0' in text
    assert "# TYPE llm_router_config_reloads_total counter" in text
    for line in text.splitlines():
        if line and not line.startswith("#"):
            assert line.startswith("llm_router_"), line  # one prefix, nothing else


async def test_an_unsupported_expect_is_refused_in_the_openai_shape(daemon: DaemonFactory, fake_provider,
                                                                    http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/healthz"),
                         ("GET", "/readyz"), ("GET", "/metrics")):
        async with http.request(method, server.url(path), json=chat_body(), headers={"Expect": "0"}) as response:
            body = await response.read()
        assert response.status == 417, (path, body)
        assert_openai_error(body, code="expectation_failed")
    assert fake.count == 0


async def test_expect_100_continue_still_gets_the_body_sent(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(simple_policy(fake))

    async with http.post(server.chat_url, json=chat_body(), expect100=True) as response:
        body = await response.json()
    assert response.status == 200 and body["choices"]

    port = int(server.base_url.rsplit(":", 1)[1])
    raw = json.dumps(chat_body()).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(raw)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(5):
            interim = await reader.readuntil(b"\r\n\r\n")  # the body is sent only after this
            writer.write(raw)
            final = await reader.read()
    finally:
        writer.close()
    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert final.startswith(b"HTTP/1.1 200 ")
    assert fake.count == 2
