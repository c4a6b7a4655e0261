"""The daemon's access log: one JSON line per chat request, failures included, closed-set values only."""

from __future__ import annotations

import json

import aiohttp
import pytest

from router.mock import Ok, Status
from tests.server.conftest import DaemonFactory
from tests.server.helpers import bearer, chat_body
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict]:
    return [json.loads(record.getMessage()) for record in caplog.records if record.name == "router.access"]


async def test_every_chat_request_gets_one_access_line(daemon: DaemonFactory, fake_provider, http,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Ok(content="fine"))
    server = await daemon(make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))},
                                      clients=[{"name": "web", "key_env": CLIENT_ENV}]))

    for body in (chat_body(), chat_body(stream=True)):
        async with http.post(server.chat_url, json=body, headers={**bearer(CLIENT_KEY), "X-Request-ID": "line-1"}):
            pass

    lines = access_lines(caplog)
    assert [(line["status"], line["stream"], line["outcome"]) for line in lines] == [
        (200, False, "success"), (200, True, "success")]
    for line in lines:
        assert (line["request_id"], line["client"], line["route"], line["provider"], line["attempts"]) == (
            "line-1", "web", "chat", "aimo", 1)
        assert CLIENT_KEY not in json.dumps(line)
    assert lines[0]["prompt_tokens"] > 0 and lines[0]["completion_tokens"] > 0  # from the provider's usage


async def test_failed_requests_name_their_route_in_the_access_line(daemon: DaemonFactory, fake_provider, http,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Status.server_error(500))
    server = await daemon(make_policy({"aimo": provider_block(fake)},
                                      {"chat": route_block(("aimo", "m"), retry={"max_attempts": 1})}))

    for body in (chat_body(), chat_body(stream=True)):
        async with http.post(server.chat_url, json=body) as response:
            assert response.status == 502

    lines = access_lines(caplog)
    assert [(line["route"], line["provider"], line["attempts"], line["status"]) for line in lines] == [
        ("chat", "aimo", 1, 502), ("chat", "aimo", 1, 502)]


async def test_an_unknown_route_never_logs_the_clients_raw_model(daemon: DaemonFactory, fake_provider, http,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    fake = await fake_provider("aimo")
    server = await daemon(make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))}))

    async with http.post(server.chat_url, json=chat_body(model="attacker-chosen\u2028string")) as response:
        assert response.status == 404

    (line,) = access_lines(caplog)
    assert line["route"] is None and line["status"] == 404
    assert "attacker-chosen" not in caplog.text


async def test_a_request_whose_client_went_away_is_logged_as_cancelled(
        daemon: DaemonFactory, fake_provider, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    fake = await fake_provider("aimo")
    fake.set_default(Ok(delay_s=2.0))
    server = await daemon(make_policy({"aimo": provider_block(fake)}, {"chat": route_block(("aimo", "m"))}))

    try:
        async with http.post(server.chat_url, json=chat_body(), timeout=aiohttp.ClientTimeout(total=0.2)):
            pass
    except TimeoutError:
        pass
    await fake.wait_until(lambda: fake.hits and fake.hits[0].ended is not None, within_s=1.0)

    (line,) = access_lines(caplog)
    assert (line["status"], line["outcome"]) == (499, "cancelled")
