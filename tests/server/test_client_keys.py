"""Client keys: who may call, with which limits and routes; what never reaches a provider."""

from __future__ import annotations

import asyncio
import hashlib
import json

import aiohttp

from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, bearer, chat_body
from tests.support.policies import CANARY_KEY, CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block

BATCH_KEY = "batch-key-with-only-a-digest-in-the-file"


def two_client_policy(fake, *, web_limits=None, web_routes=None):
    clients = [
        {"name": "web", "key_env": CLIENT_ENV, "limits": web_limits or {},
         **({"routes": web_routes} if web_routes is not None else {})},
        {"name": "batch", "key_sha256": hashlib.sha256(BATCH_KEY.encode()).hexdigest()},
    ]
    return make_policy({fake.name: provider_block(fake)},
                       {"chat": route_block((fake.name, "chat-model")),
                        "batch": route_block((fake.name, "batch-model"))},
                       clients=clients)


async def post(http: aiohttp.ClientSession, url: str, key: str | None, **body) -> tuple[int, bytes]:
    headers = bearer(key) if key is not None else {}
    async with http.post(url, json=chat_body(**body), headers=headers) as response:
        return response.status, await response.read()


async def test_key_from_key_env_is_accepted(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake))

    assert (await post(http, server.chat_url, CLIENT_KEY))[0] == 200
    assert fake.count == 1


async def test_key_matching_a_stored_sha256_digest_is_accepted(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake))

    assert (await post(http, server.chat_url, BATCH_KEY))[0] == 200
    # The digest itself is not a key.
    status, body = await post(http, server.chat_url, hashlib.sha256(BATCH_KEY.encode()).hexdigest())
    assert status == 401
    assert_openai_error(body, code="invalid_api_key")


async def test_missing_wrong_or_malformed_keys_are_401(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake))

    for headers in ({}, bearer("wrong"), bearer(CLIENT_KEY + "x"), {"Authorization": CLIENT_KEY},
                    {"Authorization": f"Basic {CLIENT_KEY}"}, {"Authorization": "Bearer "},
                    {"X-Api-Key": CLIENT_KEY}):
        async with http.post(server.chat_url, json=chat_body(), headers=headers) as response:
            body = await response.read()
        assert response.status == 401, headers
        error = assert_openai_error(body, code="invalid_api_key")
        assert error["type"] == "authentication_error"
    assert fake.count == 0


async def test_a_key_with_bytes_that_are_not_utf8_is_a_401_not_a_crash(daemon: DaemonFactory, fake_provider,
                                                                        http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake))
    port = int(server.base_url.rsplit(":", 1)[1])
    body = json.dumps(chat_body()).encode()

    for path, method in (("/v1/chat/completions", b"POST"), ("/v1/models", b"GET")):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(method + b" " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                         b"Authorization: Bearer \x80" + CLIENT_KEY.encode() + b"\xff\r\n"
                         b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() +
                         b"\r\n\r\n" + body)
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()
        finally:
            writer.close()
        head, _, payload = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 401 "), answer
        assert_openai_error(payload, code="invalid_api_key")
    assert fake.count == 0


async def test_bearer_scheme_is_case_insensitive_as_in_the_asi1_example(daemon: DaemonFactory, fake_provider,
                                                                         http) -> None:
    fake = await fake_provider("asi1")
    server = await daemon(two_client_policy(fake))

    async with http.post(server.chat_url, json=chat_body(), headers={"Authorization": f"bearer {CLIENT_KEY}"}) as r:
        await r.read()

    assert r.status == 200


async def test_the_keys_name_selects_its_own_limits(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake, web_limits={"requests_per_second": 0.2, "burst": 1}))

    assert (await post(http, server.chat_url, CLIENT_KEY))[0] == 200
    status, body = await post(http, server.chat_url, CLIENT_KEY)
    assert status == 429
    assert "web" in assert_openai_error(body, code="rate_limit_exceeded")["message"]
    # `batch` has no limits: web's exhausted bucket is not shared with it.
    for _ in range(5):
        assert (await post(http, server.chat_url, BATCH_KEY))[0] == 200
    assert fake.count == 6


async def test_a_client_restricted_to_one_route_gets_403_on_another(daemon: DaemonFactory, fake_provider,
                                                                    http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(two_client_policy(fake, web_routes=["chat"]))

    assert (await post(http, server.chat_url, CLIENT_KEY, model="chat"))[0] == 200
    status, body = await post(http, server.chat_url, CLIENT_KEY, model="batch")
    assert status == 403
    error = assert_openai_error(body, code="route_not_allowed")
    assert error["type"] == "permission_error" and error["param"] == "model"
    assert (await post(http, server.chat_url, BATCH_KEY, model="batch"))[0] == 200  # unrestricted client
    assert [hit.json["model"] for hit in fake.hits] == ["chat-model", "batch-model"]


async def test_client_credentials_and_hop_by_hop_headers_never_reach_the_provider(
        daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo", api_key=CANARY_KEY)
    server = await daemon(two_client_policy(fake))
    sent = {
        "Authorization": f"Bearer {CLIENT_KEY}",
        "Cookie": "session=client-cookie-secret",
        "Proxy-Authorization": "Basic cHJveHk6c2VjcmV0",
        "Proxy-Connection": "keep-alive",
        "Keep-Alive": "timeout=5",
        "TE": "trailers",
        "Connection": "keep-alive, X-Hop-Secret",
        "X-Hop-Secret": "hop-value",
        "X-Api-Key": "client-x-api-key",
        "OpenAI-Organization": "org-client",
    }

    async with http.post(server.chat_url, json=chat_body(), headers=sent) as response:
        await response.read()
    async with http.post(server.chat_url, json=chat_body(stream=True), headers=sent) as response_stream:
        await response_stream.read()

    assert response.status == response_stream.status == 200
    assert fake.count == 2
    for hit in fake.hits:
        received = hit.headers_ci
        assert received.getall("Authorization") == [f"Bearer {CANARY_KEY}"]  # the provider's key, only
        for name in ("Cookie", "Proxy-Authorization", "Proxy-Connection", "Keep-Alive", "TE", "X-Hop-Secret",
                     "X-Api-Key", "OpenAI-Organization"):
            assert name not in received, (name, dict(received))
        flat = "\n".join(f"{k}: {v}" for k, v in received.items())
        for secret in (CLIENT_KEY, "client-cookie-secret", "cHJveHk6c2VjcmV0", "hop-value"):
            assert secret not in flat


async def test_open_dev_mode_accepts_requests_without_a_key(daemon: DaemonFactory, fake_provider, http) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))}))

    assert (await post(http, server.chat_url, None))[0] == 200
    assert (await post(http, server.chat_url, "any-key-at-all"))[0] == 200
    assert server.context.keys.open
    assert "Bearer any-key-at-all" not in fake.hits[1].headers_ci.getall("Authorization", [])
