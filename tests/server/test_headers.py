"""x-request-id, x-router-provider and x-router-attempts on successes, errors and streams."""

from __future__ import annotations

import re

import aiohttp

from router.mock import Ok, Status, Stream
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, chat_body, sse_data, sse_text
from tests.support.policies import CLIENT_ENV, make_policy, provider_block, route_block, simple_policy

ONE_TRY_EACH = {"max_attempts": 3, "max_attempts_per_target": 1}


def router_headers(response: aiohttp.ClientResponse) -> tuple[str, str, str]:
    return (response.headers["x-request-id"], response.headers["x-router-provider"],
            response.headers["x-router-attempts"])


async def test_success_carries_provider_and_one_attempt(daemon: DaemonFactory, fake_provider,
                                                        http: aiohttp.ClientSession) -> None:
    primary = await fake_provider("primary")
    server = await daemon(simple_policy(primary))

    async with http.post(server.chat_url, json=chat_body(), headers={"X-Request-ID": "req-1"}) as response:
        await response.read()

    assert response.status == 200
    assert router_headers(response) == ("req-1", "primary", "1")


async def test_failover_after_503_reports_the_fallback_and_two_attempts(daemon: DaemonFactory, fake_provider,
                                                                        http: aiohttp.ClientSession) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    primary.script(Status.unavailable())
    server = await daemon(simple_policy(primary, backup, retry=ONE_TRY_EACH))

    async with http.post(server.chat_url, json=chat_body(), headers={"X-Request-ID": "req-2"}) as response:
        body = await response.json()

    assert response.status == 200
    assert router_headers(response) == ("req-2", "backup", "2")
    assert body["model"] == "backup-model"
    assert (primary.count, backup.count) == (1, 1)
    assert primary.hits[0].request_id == backup.hits[0].request_id == "req-2"  # same id on every attempt


async def test_retry_on_the_same_target_counts_every_attempt(daemon: DaemonFactory, fake_provider,
                                                            http: aiohttp.ClientSession) -> None:
    primary = await fake_provider("primary")
    primary.script(Status.server_error(502), Status.server_error(500))
    server = await daemon(simple_policy(primary, retry={"max_attempts": 3, "max_attempts_per_target": 3}))

    async with http.post(server.chat_url, json=chat_body()) as response:
        await response.read()

    assert response.status == 200
    assert router_headers(response)[1:] == ("primary", "3")
    assert primary.count == 3


async def test_stream_headers_reflect_invisible_failover(daemon: DaemonFactory, fake_provider,
                                                         http: aiohttp.ClientSession) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    primary.script(Status.unavailable())
    backup.set_default(Ok(content="from the backup"))
    server = await daemon(simple_policy(primary, backup, retry=ONE_TRY_EACH))

    async with http.post(server.chat_url, json=chat_body(stream=True), headers={"X-Request-ID": "s-1"}) as response:
        payloads = sse_data(await response.read())

    assert response.status == 200
    assert router_headers(response) == ("s-1", "backup", "2")
    assert sse_text(payloads) == "from the backup"


async def test_stream_error_event_first_fails_over_and_counts(daemon: DaemonFactory, fake_provider,
                                                              http: aiohttp.ClientSession) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    primary.script(Stream(error_first=True))
    server = await daemon(simple_policy(primary, backup, retry=ONE_TRY_EACH))

    async with http.post(server.chat_url, json=chat_body(stream=True)) as response:
        await response.read()

    assert response.status == 200
    assert router_headers(response)[1:] == ("backup", "2")


async def test_upstream_failure_reports_attempts_and_last_provider(daemon: DaemonFactory, fake_provider,
                                                                   http: aiohttp.ClientSession) -> None:
    primary, backup = await fake_provider("primary"), await fake_provider("backup")
    primary.set_default(Status.server_error(500))
    backup.set_default(Status.server_error(503))
    server = await daemon(simple_policy(primary, backup, retry={"max_attempts": 2, "max_attempts_per_target": 1}))

    async with http.post(server.chat_url, json=chat_body(), headers={"X-Request-ID": "e-1"}) as response:
        body = await response.read()

    assert response.status == 502
    assert router_headers(response) == ("e-1", "backup", "2")
    assert_openai_error(body)


async def test_streaming_request_that_fails_before_commit_gets_json_error_and_headers(
        daemon: DaemonFactory, fake_provider, http: aiohttp.ClientSession) -> None:
    primary = await fake_provider("primary")
    primary.set_default(Status.server_error(500))
    server = await daemon(simple_policy(primary, retry={"max_attempts": 2, "max_attempts_per_target": 2}))

    async with http.post(server.chat_url, json=chat_body(stream=True), headers={"X-Request-ID": "e-2"}) as response:
        body = await response.read()

    assert response.status == 502
    assert response.headers["Content-Type"].startswith("application/json")
    assert router_headers(response) == ("e-2", "primary", "2")
    assert_openai_error(body)


async def test_refusals_before_any_attempt_carry_zero_attempts(daemon: DaemonFactory, fake_provider,
                                                               http: aiohttp.ClientSession) -> None:
    primary = await fake_provider("primary")
    server = await daemon(make_policy({"primary": provider_block(primary)}, {"chat": route_block(("primary", "m"))},
                                      clients=[{"name": "web", "key_env": CLIENT_ENV}]))

    async with http.post(server.chat_url, json=chat_body()) as response:  # no key
        await response.read()

    assert response.status == 401
    request_id, provider, attempts = router_headers(response)
    assert re.fullmatch(r"[0-9a-f]{32}", request_id)
    assert (provider, attempts) == ("none", "0")
    assert primary.count == 0
