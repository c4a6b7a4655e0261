"""The daemon behind a corporate egress: `router serve` with HTTPS_PROXY in its environment reaches an
https provider behind a private CA, through the proxy's CONNECT tunnel, with mutual TLS; JSON and
streams alike. The provider's host name is one only the proxy resolves (tests/support/proxy.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from router.mock import FakeProvider
from tests.server.conftest import CliFactory
from tests.server.helpers import bearer, sse_data
from tests.support.pki import PROVIDER_HOST, Pki, make_pki
from tests.support.policies import CLIENT_ENV, policy_text, provider_block, route_block
from tests.support.proxy import ForwardProxy

pytestmark = pytest.mark.slow  # a daemon subprocess


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def private_provider(pki: Pki) -> AsyncIterator[FakeProvider]:
    provider = FakeProvider("private", models=["private-model"])
    await provider.start(tls=pki.server_context(require_client_cert=True))
    yield provider
    await provider.stop()


async def test_the_daemon_reaches_a_private_mtls_provider_through_an_https_proxy(
        cli_daemon: CliFactory, pki: Pki, private_provider: FakeProvider, http: aiohttp.ClientSession) -> None:
    proxy = ForwardProxy(hosts={PROVIDER_HOST: "127.0.0.1"}, credentials="egress:pa55")
    await proxy.start()
    try:
        port = private_provider.base_url.rsplit(":", 1)[1].split("/")[0]
        block = provider_block(f"https://{PROVIDER_HOST}:{port}/v1",
                               tls={"ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
                                    "client_key": str(pki.client_key)})
        text = policy_text({"private": block}, {"chat": route_block(("private", "private-model"))},
                           clients=[{"name": "app", "key_env": CLIENT_ENV}])
        daemon = await cli_daemon(text, env={"HTTPS_PROXY": f"http://egress:pa55@127.0.0.1:{proxy.port}",
                                             "NO_PROXY": "localhost"})
        payload = {"model": "chat", "messages": [{"role": "user", "content": "through the proxy"}]}
        async with http.post(daemon.chat_url, json=payload, headers=bearer()) as answer:
            assert answer.status == 200, await answer.text()
            assert json.loads(await answer.read())["choices"][0]["message"]["content"]
        async with http.post(daemon.chat_url, json={**payload, "stream": True}, headers=bearer()) as answer:
            assert answer.status == 200
            events = sse_data(await answer.read())
            assert events[-1] == "[DONE]" and len(events) > 2
        assert private_provider.total_hits == 2
        assert {(seen.method, seen.target, seen.answer) for seen in proxy.seen} == {
            ("CONNECT", f"{PROVIDER_HOST}:{port}", 200)}
        log = daemon.stderr()
        assert f"provider private: through the proxy http://127.0.0.1:{proxy.port} (from HTTPS_PROXY)" in log
        assert "pa55" not in log + daemon.stdout()
    finally:
        await proxy.close()
