"""What a client sends can neither travel upstream as credentials nor choose where the request goes.

- Headers: the provider receives exactly the headers the router builds (its own key,
  the policy's custom headers, framing, `X-Request-ID`), never the client's
  `Authorization`, `Cookie`, `Proxy-Authorization`, hop-by-hop headers or headers
  the client's `Connection` names. Checked at the fake provider, which records every
  header it gets (a control test shows it records these very headers when they are
  sent to it directly).
- Body: fields such as `base_url`, `api_base`, `provider` or a nested `model`
  never change the destination; only the policy does.
- Redirects: a provider's 3xx is never followed, with or without our key: it counts
  as a provider failure (the next target answers), and its `Location` reaches no one.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from router.mock import FakeProvider, Status
from router.observe.prometheus import PrometheusObserver
from tests.security.canaries import ALPHA_KEY, BATCH_KEY, BETA_KEY, CANARY_ENV, WEB_KEY
from tests.security.conftest import WatchedHttp
from tests.security.scenarios import assert_provider_saw_only_its_own_key
from tests.server.conftest import DaemonFactory
from tests.server.helpers import chat_body, sse_data
from tests.support.daemon import InProcessDaemon
from tests.support.policies import FAST_RETRY, FAST_TIMEOUTS, LENIENT_BREAKER, make_policy

WEB = {"Authorization": f"Bearer {WEB_KEY}"}
# Everything the router itself puts on an upstream request (Accept only on streams, X-Team is the
# policy's custom header); aiohttp adds Host, Content-Length and Accept-Encoding.
ROUTER_HEADERS = {"host", "content-type", "content-length", "user-agent", "authorization", "x-request-id", "accept",
                  "accept-encoding", "x-team"}
CLIENT_ONLY = {
    "Cookie": f"session={WEB_KEY}",
    "Proxy-Authorization": f"Basic {BATCH_KEY}",
    "Proxy-Authenticate": "Basic realm=client",
    "Proxy-Connection": "keep-alive",
    "Keep-Alive": "timeout=5, max=100",
    "TE": "trailers, deflate",
    "Trailer": "X-Checksum",
    "Upgrade": "h2c",
    "Connection": "keep-alive, Upgrade, X-Hop-Secret, HTTP2-Settings",
    "X-Hop-Secret": "hop-by-hop-value",
    "HTTP2-Settings": "AAMAAABkAAQCAAAAAAIAAAAA",
    "X-Api-Key": WEB_KEY,
    "OpenAI-Organization": "org-client",
    "X-Forwarded-For": "10.0.0.1",
    "Forwarded": "for=10.0.0.1;host=evil.test",
    "X-Forwarded-Host": "evil.test",
    "X-Base-URL": "http://evil.test/v1",
}


@dataclass(slots=True)
class Setup:
    server: InProcessDaemon
    alpha: FakeProvider
    beta: FakeProvider
    evil: FakeProvider  # in no route: nothing may ever reach it


@pytest.fixture
async def setup(daemon: DaemonFactory, fake_provider) -> AsyncIterator[Setup]:
    alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
    beta = await fake_provider("beta", api_key=BETA_KEY)
    evil = await fake_provider("evil", strict=False)

    def provider(fake: FakeProvider, env: str, **extra: object) -> dict[str, object]:
        return {"base_url": fake.base_url, "api_key_env": env, "timeouts": dict(FAST_TIMEOUTS),
                "breaker": dict(LENIENT_BREAKER), **extra}

    retry = {**FAST_RETRY, "max_attempts": 2, "max_attempts_per_target": 1, "wait_for_preferred_s": 0}
    policy = make_policy(
        {"alpha": provider(alpha, "SEC_ALPHA_KEY", headers={"X-Team": "search"}),
         "beta": provider(beta, "SEC_BETA_KEY")},
        {"chat": {"targets": [{"provider": "alpha", "model": "alpha-model", "priority": 0},
                              {"provider": "beta", "model": "beta-model", "priority": 1}], "retry": retry},
         "*": {"targets": [{"provider": "alpha", "model": "{model}"}], "retry": retry}},
        clients=[{"name": "web", "key_env": "SEC_WEB_KEY"}], env=CANARY_ENV)
    server = await daemon(policy, observer=PrometheusObserver())
    yield Setup(server, alpha, beta, evil)
    assert evil.count == 0, [hit.headers for hit in evil.hits]
    assert_provider_saw_only_its_own_key(alpha, ALPHA_KEY)
    assert_provider_saw_only_its_own_key(beta, BETA_KEY)


# -- headers -------------------------------------------------------------------------------------


def raw_request(port: int, headers: dict[str, str], body: bytes, *, chunked: bool) -> bytes:
    lines = ["POST /v1/chat/completions HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json",
             *(f"{name}: {value}" for name, value in headers.items())]
    if chunked:
        lines.append("Transfer-Encoding: chunked")
        payload = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\nX-Checksum: 1\r\n\r\n"
    else:
        lines.append(f"Content-Length: {len(body)}")
        payload = body
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def send_raw(port: int, request: bytes) -> tuple[int, bytes]:
    """Send one raw HTTP/1.1 request; return the status and the raw answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(5):
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.read(1 << 16)
    finally:
        writer.close()
    return int(head.split(b" ")[1]), head + rest


def port_of(url: str) -> int:
    return int(url.split("://")[1].split("/")[0].rsplit(":", 1)[1])


async def test_the_fake_provider_records_these_headers_when_sent_to_it(fake_provider) -> None:
    """Control: the check at the provider can see every header the next tests send."""
    fake = await fake_provider("control")
    body = json.dumps(chat_body()).encode()
    status, _ = await send_raw(port_of(fake.base_url),
                               raw_request(port_of(fake.base_url), {**WEB, **CLIENT_ONLY}, body, chunked=True))
    assert status == 200
    received = {name.lower() for name in fake.hits[0].headers_ci}
    assert {name.lower() for name in CLIENT_ONLY} | {"authorization", "transfer-encoding"} <= received


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_client_credentials_and_hop_by_hop_headers_never_reach_the_provider(setup: Setup, stream: bool,
                                                                                   chunked: bool) -> None:
    body = json.dumps(chat_body(stream=stream)).encode()
    port = port_of(setup.server.base_url)

    status, answer = await send_raw(port, raw_request(port, {**WEB, **CLIENT_ONLY}, body, chunked=chunked))

    assert status == 200, answer
    [hit] = setup.alpha.hits
    received = {name.lower() for name in hit.headers_ci}
    assert received <= ROUTER_HEADERS, received - ROUTER_HEADERS
    assert hit.headers_ci.getall("Authorization") == [f"Bearer {ALPHA_KEY}"]
    assert hit.headers_ci["Host"] == f"127.0.0.1:{port_of(setup.alpha.base_url)}"
    assert hit.headers_ci["X-Team"] == "search"
    assert "chunked" not in hit.headers_ci.get("Transfer-Encoding", "")
    for value in CLIENT_ONLY.values():
        assert value not in "\n".join(hit.headers_ci.values()), value


async def test_a_provider_key_presented_by_a_client_is_refused_not_forwarded(setup: Setup,
                                                                             watched_http: WatchedHttp) -> None:
    answer = await watched_http.post(setup.server.chat_url, json=chat_body(),
                                     headers={"Authorization": f"Bearer {ALPHA_KEY}"})
    assert answer.status == 401
    assert setup.alpha.count == 0


# -- the body cannot choose the destination -------------------------------------------------------


def steering_bodies(evil: FakeProvider) -> dict[str, dict[str, object]]:
    url = evil.base_url or ""
    return {
        "base_url": chat_body(base_url=url),
        "api_base": chat_body(api_base=url, api_type="open_ai", api_version="2024-01-01"),
        "url and endpoint": chat_body(url=f"{url}/chat/completions", endpoint=url, host="127.0.0.1"),
        "provider": chat_body(provider="evil", providers=["evil"], route="evil", target={"provider": "evil"}),
        "extra_headers": chat_body(extra_headers={"Authorization": "Bearer token-in-body", "Host": "evil.test"},
                                   headers={"X-Api-Key": "token-in-body"}, api_key="token-in-body"),
        "extra_body": chat_body(extra_body={"model": "evil", "base_url": url, "provider": "evil"}),
        "nested models": chat_body(metadata={"model": "evil"}, tools=[{"type": "function", "function": {
            "name": "f", "parameters": {"type": "object", "properties": {"model": {"const": "evil"}}}}}],
                                   messages=[{"role": "user", "content": "hi", "model": "evil", "name": "model"}]),
        "model-like keys": {"Model": "evil", "model ": "evil", "MODEL": "evil", **chat_body()},
        "stream_options": chat_body(stream_options={"base_url": url, "include_usage": True}),
        "prefilled assistant": chat_body(messages=[{"role": "user", "content": "hi"},
                                                   {"role": "assistant", "content": url}]),
    }


async def test_body_fields_never_change_the_destination(setup: Setup, watched_http: WatchedHttp) -> None:
    bodies = steering_bodies(setup.evil)
    for name, body in bodies.items():
        answer = await watched_http.post(setup.server.chat_url, json=body, headers=WEB)
        assert answer.status == 200, (name, answer.body)
        hit = setup.alpha.hits[-1]
        sent = hit.json
        assert isinstance(sent, dict) and sent["model"] == "alpha-model", name
        # Forwarded as data for the provider to ignore or refuse: only `model` was replaced.
        assert {k: v for k, v in sent.items() if k != "model"} == {k: v for k, v in body.items() if k != "model"}
    assert setup.alpha.count == len(bodies)


@pytest.mark.parametrize("model", [
    "http://127.0.0.1:{evil}/v1", "//127.0.0.1:{evil}/v1/chat/completions", "../../../v1/chat/completions",
    "evil/../../x", "@127.0.0.1:{evil}", "m\r\nHost: 127.0.0.1:{evil}", "m?base_url=http://127.0.0.1:{evil}",
    "%2e%2e%2fevil", "evil#frag",
])
async def test_a_model_name_forwarded_by_a_glob_route_stays_in_the_body(setup: Setup, watched_http: WatchedHttp,
                                                                        model: str) -> None:
    requested = model.format(evil=port_of(setup.evil.base_url or ""))
    answer = await watched_http.post(setup.server.chat_url, json=chat_body(model=requested), headers=WEB)

    assert answer.status == 200, answer.body
    [hit] = setup.alpha.hits
    assert hit.json == chat_body(model=requested)  # the `*` route forwards the name as the model, in the body
    assert hit.headers_ci["Host"] == f"127.0.0.1:{port_of(setup.alpha.base_url or '')}"


async def test_a_second_model_key_cannot_smuggle_another_route(setup: Setup, watched_http: WatchedHttp) -> None:
    raw = b'{"model": "chat", "messages": [{"role": "user", "content": "hi"}], "\\u006dodel": "evil"}'
    answer = await watched_http.post(setup.server.chat_url, data=raw,
                                     headers={**WEB, "Content-Type": "application/json"})
    assert answer.status == 400
    assert setup.alpha.count == 0


# -- redirects ------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("where", ["other-origin", "same-origin"])
async def test_redirects_are_not_followed_and_count_as_a_provider_failure(
        setup: Setup, watched_http: WatchedHttp, status: int, where: str, stream: bool) -> None:
    target = setup.evil.base_url if where == "other-origin" else setup.alpha.base_url
    location = f"{target}/chat/completions"
    setup.alpha.script(Status(status, body=b"", headers={"Location": location}))

    answer = await watched_http.post(setup.server.chat_url, json=chat_body(stream=stream), headers=WEB)

    assert answer.status == 200  # beta answered: the 3xx was a failure of alpha, not an answer
    assert answer.headers["x-router-provider"] == "beta"
    assert answer.headers["x-router-attempts"] == "2"
    assert "Location" not in answer.headers and location.encode() not in answer.body
    assert setup.alpha.count == 1  # not followed, not even to itself
    if stream:
        assert sse_data(answer.body)[-1] == "[DONE]"
    metrics = (await watched_http.get(setup.server.url("/metrics"))).body.decode()
    assert 'llm_router_upstream_attempts_total{outcome="invalid_response",provider="alpha",route="chat"} 1.0' \
        in metrics


async def test_a_redirect_on_the_only_target_is_a_502_without_location(setup: Setup,
                                                                      watched_http: WatchedHttp) -> None:
    setup.alpha.set_default(Status(307, body=b"moved", headers={"Location": f"{setup.evil.base_url}/chat/completions"}))

    answer = await watched_http.post(setup.server.chat_url, json=chat_body(model="anything"), headers=WEB)

    assert answer.status == 502
    error = answer.json()["error"]
    assert "invalid_response" in error["message"] and "307" in error["message"]
    assert "Location" not in answer.headers
    assert setup.alpha.count == 1  # one target, one attempt on it: not followed

