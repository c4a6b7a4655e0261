"""The daemon, in process, under many scenarios: no canary in any answer, log record or metric.

Each test runs under the package's leak watch (DEBUG logging everywhere); every
answer is read through `watched_http`, and every test ends by scraping /metrics
into the watch. Where an attempt was made, the test also checks the provider got
its own key and nothing else, so the canary really was in play.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from router.mock import FakeProvider, Hang, Reset, SlowFirstByte, Status, Stream
from router.server.main import reload_policy
from tests.security.canaries import (
    ALPHA_KEY,
    BATCH_KEY,
    BETA_KEY,
    CANARY_ENV,
    DIGEST_CLIENT_KEY,
    DIGEST_CLIENT_SHA256,
    GAMMA_KEY,
    WEB_KEY,
    LeakWatch,
)
from tests.security.conftest import Answer, WatchedHttp
from tests.security.scenarios import (
    ERROR_ANSWERS,
    assert_provider_saw_only_its_own_key,
    chunk,
    echo_headers,
    echoing_status,
    error_event,
    load,
    policy_yaml,
    sse,
    sse_answer,
)
from tests.server.conftest import DaemonFactory
from tests.server.helpers import assert_openai_error, chat_body, sse_data
from tests.support.daemon import InProcessDaemon
from tests.support.policies import free_port

WEB = {"Authorization": f"Bearer {WEB_KEY}"}


@dataclass(slots=True)
class Deployment:
    server: InProcessDaemon
    alpha: FakeProvider
    beta: FakeProvider
    gamma: FakeProvider
    http: WatchedHttp
    watch: LeakWatch

    async def chat(self, model: str = "chat", *, stream: bool = False, headers: dict[str, str] | None = None,
                   **fields: object) -> Answer:
        body = chat_body(model=model, stream=stream, **fields) if stream else chat_body(model=model, **fields)
        return await self.http.post(self.server.chat_url, json=body, headers=WEB if headers is None else headers)

    async def scrape(self) -> str:
        metrics = await self.http.get(self.server.url("/metrics"))
        assert metrics.status == 200
        return metrics.body.decode()

    def check_providers(self) -> None:
        assert_provider_saw_only_its_own_key(self.alpha, ALPHA_KEY)
        assert_provider_saw_only_its_own_key(self.beta, BETA_KEY)
        assert_provider_saw_only_its_own_key(self.gamma, GAMMA_KEY)


Deploy = Callable[..., Awaitable[Deployment]]


@pytest.fixture
async def deploy(daemon: DaemonFactory, fake_provider, watched_http: WatchedHttp,
                 leak_watch: LeakWatch) -> AsyncIterator[Deploy]:
    """Start the three providers and the daemon; at the end scrape /metrics and check the providers."""
    deployments: list[Deployment] = []

    async def start(**policy_options: object) -> Deployment:
        alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
        beta = await fake_provider("beta", api_key=BETA_KEY)
        gamma = await fake_provider("gamma")
        server = await daemon(load(policy_yaml(alpha, beta, gamma, **policy_options)))
        deployment = Deployment(server, alpha, beta, gamma, watched_http, leak_watch)
        deployments.append(deployment)
        return deployment

    yield start
    for deployment in deployments:
        await deployment.scrape()
        deployment.check_providers()


# -- successes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_success_for_every_kind_of_client(deploy: Deploy, stream: bool) -> None:
    d = await deploy()
    for key in (WEB_KEY, BATCH_KEY, DIGEST_CLIENT_KEY):
        answer = await d.chat(stream=stream, headers={"Authorization": f"Bearer {key}"})
        assert answer.status == 200, answer.body
    assert d.alpha.count == 3


async def test_glob_route_and_failover_success(deploy: Deploy) -> None:
    d = await deploy()
    d.alpha.script(Status.server_error(503))
    assert (await d.chat()).status == 200
    assert (await d.chat("custom:echo")).status == 200
    assert (d.alpha.count, d.beta.count) == (2, 1)


# -- provider errors, echoing our key ------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize(("status", "code"), ERROR_ANSWERS, ids=[f"{s}-{c}" for s, c in ERROR_ANSWERS])
async def test_provider_error_echoing_our_key_reaches_no_one(deploy: Deploy, status: int, code: str | None,
                                                             stream: bool) -> None:
    d = await deploy()
    d.alpha.set_default(echoing_status(status, code, ALPHA_KEY))

    answer = await d.chat("solo", stream=stream)

    assert answer.status != 200 and answer.status != 500, answer.body
    assert_openai_error(answer.body)
    assert d.alpha.count == 1


@pytest.mark.parametrize(("status", "code"), ERROR_ANSWERS[:8], ids=[f"{s}-{c}" for s, c in ERROR_ANSWERS[:8]])
async def test_error_inside_a_200_echoing_our_key_reaches_no_one(deploy: Deploy, status: int,
                                                                 code: str | None) -> None:
    d = await deploy()
    d.alpha.set_default(Status(200, body=json.dumps(error_event(code or "error", ALPHA_KEY, status)),
                               headers=echo_headers(ALPHA_KEY)))

    answer = await d.chat("solo")

    assert answer.status != 200
    assert_openai_error(answer.body)


@pytest.mark.parametrize("status", [401, 403])
async def test_provider_rejecting_our_key_fails_over_without_echoing_it(deploy: Deploy, status: int) -> None:
    d = await deploy()
    d.gamma.set_default(echoing_status(status, "invalid_api_key", GAMMA_KEY))

    for stream in (False, True):
        answer = await d.chat("bad", stream=stream)
        assert answer.status == 200  # beta answered
    assert d.gamma.count == 1  # ejected after the first 401/403


async def test_provider_with_a_wrong_key_in_the_policy_is_refused_quietly(deploy: Deploy) -> None:
    d = await deploy()
    d.gamma.api_key = "not-the-key-we-send"  # it answers 401 to GAMMA_KEY

    answer = await d.chat("bad")

    assert answer.status == 200
    assert d.gamma.hits[0].status == 401


# -- streams -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["content_policy_violation", "invalid_request_error", "server_error",
                                  "invalid_api_key", "context_length_exceeded"])
async def test_stream_whose_first_event_is_an_error_echoing_our_key(deploy: Deploy, code: str) -> None:
    d = await deploy()
    d.alpha.set_default(sse_answer(sse(error_event(code, ALPHA_KEY), b"[DONE]"), ALPHA_KEY))

    answer = await d.chat("solo", stream=True)

    assert answer.status != 200
    assert_openai_error(answer.body)


@pytest.mark.parametrize("code", ["content_policy_violation", "server_error", "invalid_api_key"])
async def test_stream_error_event_after_the_commit_point_echoing_our_key(deploy: Deploy, code: str) -> None:
    d = await deploy()
    d.alpha.set_default(sse_answer(sse(chunk("Hel"), chunk("lo"), error_event(code, ALPHA_KEY), b"[DONE]"),
                                   ALPHA_KEY))

    answer = await d.chat("solo", stream=True)

    assert answer.status == 200
    payloads = sse_data(answer.body)
    assert payloads[-1] != "[DONE]"  # interrupted, said so with the router's own error event


@pytest.mark.parametrize("fault", [Stream(cut_after=2), Stream(stall_after=1), Stream(malformed_at=2),
                                   Stream(send_done=False, send_finish_reason=False)],
                         ids=["cut", "stall", "malformed", "truncated"])
async def test_broken_streams(deploy: Deploy, fault: Stream) -> None:
    d = await deploy(idle_s=0.3)
    d.alpha.set_default(fault)

    answer = await d.chat("solo", stream=True)

    assert answer.status == 200
    assert sse_data(answer.body)


async def test_stream_cut_continued_on_another_provider(deploy: Deploy) -> None:
    d = await deploy()
    d.alpha.script(Stream(content="one two three four", chunks=4, cut_after=2))

    answer = await d.chat("chat", stream=True)

    assert answer.status == 200
    assert sse_data(answer.body)[-1] == "[DONE]"


# -- transport failures and redirects ----------------------------------------------------------


@pytest.mark.parametrize("fault", [Reset(), Reset(rst=False), Hang(), SlowFirstByte(5.0)],
                         ids=["rst", "fin", "hang", "slow"])
@pytest.mark.slow
async def test_transport_failures(deploy: Deploy, fault: object) -> None:
    d = await deploy(first_byte_s=0.3)
    d.alpha.set_default(fault)  # type: ignore[arg-type]

    for stream in (False, True):
        answer = await d.chat("solo", stream=stream)
        assert answer.status in (502, 504)
        assert_openai_error(answer.body)


async def test_provider_that_refuses_connections(daemon: DaemonFactory, fake_provider,
                                                 watched_http: WatchedHttp) -> None:
    beta = await fake_provider("beta", api_key=BETA_KEY)
    closed = f"http://127.0.0.1:{free_port()}/v1"
    server = await daemon(load(policy_yaml(closed, beta, closed)))

    answer = await watched_http.post(server.chat_url, json=chat_body(model="solo"), headers=WEB)

    assert answer.status == 502
    assert_openai_error(answer.body)


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirect_with_our_key_in_the_location(deploy: Deploy, status: int) -> None:
    d = await deploy()
    d.alpha.set_default(Status(status, body=b"", headers={
        "Location": f"http://127.0.0.1:1/steal?key={ALPHA_KEY}", **echo_headers(ALPHA_KEY)}))

    answer = await d.chat("solo")

    assert answer.status == 502
    assert_openai_error(answer.body)


# -- the client's side ---------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "", "Bearer", f"Bearer {WEB_KEY}x", f"Bearer {WEB_KEY[:-1]}", f"Basic {WEB_KEY}", f"bearer  {WEB_KEY[:8]}",
    f"Bearer {ALPHA_KEY}",  # a provider key presented as a client key
    f"Bearer {BATCH_KEY} {WEB_KEY}",
])
async def test_bad_client_keys_are_refused_without_echo(deploy: Deploy, authorization: str | None) -> None:
    d = await deploy()
    headers = {} if authorization is None else {"Authorization": authorization}

    for path in ("/v1/chat/completions", "/v1/models"):
        answer = await (d.http.post(d.server.url(path), json=chat_body(), headers=headers)
                        if path.endswith("completions") else d.http.get(d.server.url(path), headers=headers))
        assert answer.status == 401
        assert_openai_error(answer.body, code="invalid_api_key")
    assert d.alpha.count == 0


async def test_route_not_allowed_and_client_rate_limit(deploy: Deploy) -> None:
    d = await deploy()
    batch = {"Authorization": f"Bearer {BATCH_KEY}"}

    assert (await d.chat("solo", headers=batch)).status == 403
    assert (await d.chat("chat", headers=batch)).status == 200
    limited = await d.chat("chat", headers=batch)
    assert limited.status == 429
    assert_openai_error(limited.body, code="rate_limit_exceeded")


async def test_refusals_before_routing(deploy: Deploy) -> None:
    d = await deploy(server={"max_body_bytes": 2048})
    url = d.server.chat_url
    cases = [
        (await d.http.post(url, data=b"{", headers=WEB), 400),
        (await d.http.post(url, json={"model": "chat"}, headers=WEB), 400),
        (await d.http.post(url, json=chat_body("x" * 4000), headers=WEB), 413),
        (await d.http.post(url, json=chat_body(model=f"unknown-{WEB_KEY[:3]}"), headers=WEB), 404),
        (await d.http.request("PATCH", url, headers=WEB), 405),
        (await d.http.get(d.server.url("/v1/nothing"), headers=WEB), 404),
        (await d.http.post(url, data=b"\x1f\x8b garbage", headers={**WEB, "Content-Encoding": "gzip"}), 400),
    ]
    for answer, status in cases:
        assert answer.status == status, answer.body
        assert_openai_error(answer.body)


async def test_operational_endpoints(deploy: Deploy) -> None:
    d = await deploy()
    await d.chat()
    for path in ("/healthz", "/readyz", "/metrics"):
        assert (await d.http.get(d.server.url(path))).status == 200
    models = await d.http.get(d.server.url("/v1/models"), headers=WEB)
    assert models.status == 200 and models.json()["data"]


async def test_client_headers_carrying_its_key_are_neither_echoed_nor_logged(deploy: Deploy) -> None:
    d = await deploy()
    headers = {**WEB, "X-Request-ID": f"{WEB_KEY} with spaces", "OpenAI-Organization": WEB_KEY,
               "X-Api-Key": BATCH_KEY, "Cookie": f"session={WEB_KEY}", "Proxy-Authorization": f"Bearer {WEB_KEY}"}

    for stream in (False, True):
        answer = await d.chat(stream=stream, headers=headers)
        assert answer.status == 200
        assert WEB_KEY[:8] not in answer.headers["x-request-id"]  # not safe to log: replaced


# -- reloads and start-up -----------------------------------------------------------------------


def _invalid_policies(valid: str) -> list[tuple[str, str, str]]:
    """(mistake, file text, key path the error must name): broken files where a secret is in the file."""
    alpha_headers = "supports_prefill: true\n    headers: "
    return [
        ("provider key pasted as api_key_env", valid.replace("api_key_env: SEC_ALPHA_KEY", f"api_key_env: {ALPHA_KEY}"),
         "providers.alpha.api_key_env"),
        ("client key pasted as key_env", valid.replace("key_env: SEC_WEB_KEY", f"key_env: {WEB_KEY}"),
         "clients[0].key_env"),
        ("key written as api_key", valid.replace("api_key_env: SEC_ALPHA_KEY", f"api_key: {ALPHA_KEY}"),
         "providers.alpha.api_key"),
        ("client key as key_sha256", valid.replace(DIGEST_CLIENT_SHA256, DIGEST_CLIENT_KEY), "clients[2].key_sha256"),
        ("key in base_url credentials",
         valid.replace("base_url: http://127.0.0.1", f"base_url: http://user:{ALPHA_KEY}@127.0.0.1", 1),
         "providers.alpha.base_url"),
        ("key in a base_url query", valid.replace("/v1\n", f"/v1?key={ALPHA_KEY}\n", 1), "providers.alpha.base_url"),
        ("key in a header value with a line break",
         valid.replace("supports_prefill: true", alpha_headers + f'{{X-Api-Key: "{ALPHA_KEY}\\n"}}', 1),
         "providers.alpha.headers.X-Api-Key"),
        ("key as an Authorization header",
         valid.replace("supports_prefill: true", alpha_headers + f"{{Authorization: Bearer {ALPHA_KEY}}}", 1),
         "providers.alpha.headers.Authorization"),
        ("key in a list-valued header",
         valid.replace("supports_prefill: true", alpha_headers + f"{{X-Api-Key: [{ALPHA_KEY}]}}", 1),
         "providers.alpha.headers.X-Api-Key"),
        ("key in a redis url password",
         valid + f"state: {{backend: memory, url: 'redis://:{ALPHA_KEY}@127.0.0.1:6379/0'}}\n", "state.url"),
        ("key on a line with a YAML error", valid + f"oops: [{ALPHA_KEY}\n", "invalid YAML"),
        ("key under an explicit YAML tag", valid + f"oops: !!int {ALPHA_KEY}\n", "invalid YAML"),
        ("key under an unknown top-level key", valid + f"api_key: {ALPHA_KEY}\n", "api_key"),
    ]


async def test_reload_with_invalid_files_keeps_serving_and_logs_no_secret(
        deploy: Deploy, tmp_path: Path, leak_watch: LeakWatch, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CANARY_ENV.items():
        monkeypatch.setenv(name, value)  # reload_policy reads the keys from the environment, as the daemon does
    d = await deploy()
    valid = policy_yaml(d.alpha, d.beta, d.gamma)
    path = tmp_path / "policy.yaml"
    cases = _invalid_policies(valid)
    for mistake, text, named in cases:
        assert text != valid, mistake
        path.write_text(text, encoding="utf-8")
        before = leak_watch.size
        assert reload_policy(d.server.context, str(path)) is False, mistake
        logged = "\n".join(sink.text for sink in leak_watch.sinks[before:])
        assert f"policy.yaml: {named}" in logged, (mistake, logged[:400])  # refused for that very mistake
    path.write_text(valid, encoding="utf-8")
    assert reload_policy(d.server.context, str(path)) is True
    assert (await d.chat()).status == 200
    assert d.server.context.reloads == {"success": 1, "failure": len(cases)}


async def test_startup_in_open_mode_warns_without_secrets(daemon: DaemonFactory, fake_provider,
                                                          watched_http: WatchedHttp, leak_watch: LeakWatch) -> None:
    alpha = await fake_provider("alpha", api_key=ALPHA_KEY)
    before = leak_watch.size
    server = await daemon(load(policy_yaml(alpha, alpha, alpha, clients=False)))
    assert any("dev mode" in sink.text for sink in leak_watch.sinks[before:])
    answer = await watched_http.post(server.chat_url, json=chat_body(model="solo"),
                                     headers={"Authorization": f"Bearer {WEB_KEY}"})
    assert answer.status == 200
    assert_provider_saw_only_its_own_key(alpha, ALPHA_KEY)


async def test_demo_providers_and_full_daemon_lifecycle(tmp_path: Path, leak_watch: LeakWatch,
                                                        watched_http: WatchedHttp,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """run_daemon as `router serve` runs it: demo providers, listen, SIGHUP-style reload, drain."""
    from router.server import main

    for name, value in CANARY_ENV.items():
        monkeypatch.setenv(name, value)
    port, demo_port = free_port(), free_port()
    text = policy_yaml(f"http://127.0.0.1:{demo_port}/v1", f"http://127.0.0.1:{demo_port}/v1",
                       f"http://127.0.0.1:{demo_port}/v1")
    mock = "supports_prefill: true\n    mock: {error_rates: {503: 0.5}, seed: 1}"
    text = text.replace("supports_prefill: true", mock, 1)
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    policy = load(text)
    ready = asyncio.Event()
    task = asyncio.create_task(main.run_daemon(policy, str(path), "127.0.0.1", port, ready=ready))
    waiting = asyncio.create_task(ready.wait())
    await asyncio.wait([task, waiting], timeout=10, return_when=asyncio.FIRST_COMPLETED)
    assert ready.is_set(), "the daemon did not start"
    try:
        for _ in range(4):
            answer = await watched_http.post(f"http://127.0.0.1:{port}/v1/chat/completions",
                                             json=chat_body(model="solo"), headers=WEB)
            assert answer.status in (200, 502)
        await watched_http.get(f"http://127.0.0.1:{port}/metrics")
    finally:
        os.kill(os.getpid(), signal.SIGTERM)  # handled by the daemon's loop signal handler: a drain
        assert await asyncio.wait_for(task, 10) == 0
    assert any("demo provider" in sink.text for sink in leak_watch.sinks)
