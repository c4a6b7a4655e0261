"""Egress as real deployments need it, through both clients: a private CA, mutual TLS, verification off
only on purpose, and an HTTP proxy from the environment (a CONNECT tunnel for https, the absolute form
for http, NO_PROXY, proxy credentials).

The certificates come from a CA made for the session by the openssl command line (tests/support/pki.py);
the proxy is a loopback forward proxy (tests/support/proxy.py) that alone knows where `provider.test`
is, so a request that reached that provider went through the proxy. Providers are built by the policy
loader from YAML-shaped data and an environment mapping, as the daemon builds them.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from router.policy import Provider, policy_from_mapping
from router.upstream.errors import ConnectFailed, TransportError
from router.upstream.transport import HttpTransport, Outgoing
from tests.support.pki import PROVIDER_HOST, Pki, make_pki
from tests.support.proxy import ForwardProxy
from tests.support.wire_server import COMPLETION, Peer, Request, ScriptedServer, answer, response
from tests.upstream.conftest import ServerFactory, TransportFactory

CLIENTS = ("fast", "aiohttp")
BODY = b'{"model": "m", "messages": [{"role": "user", "content": "hi"}]}'


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


KEY = "sk-egress-key-0123"


def load_provider(base_url: str, client: str, env: Mapping[str, str] | None = None, **keys: Any) -> Provider:
    data = {"providers": {"p": {"base_url": base_url, "http_client": client, "timeouts": {"connect_s": 2.0},
                                "api_key_env": "PROVIDER_KEY", **keys}},
            "routes": {"r": {"targets": [{"provider": "p", "model": "m"}]}}}
    return policy_from_mapping(data, env={"PROVIDER_KEY": KEY, **(env or {})}).providers["p"]


async def ask(transport: HttpTransport, provider: Provider) -> bytes:
    outgoing = Outgoing(provider=provider, body=BODY, request_id="egress-1", stream=False,
                        deadline=time.monotonic() + 10.0)
    reply = await transport.send(outgoing)
    try:
        assert reply.status == 200
        return await reply.read()
    finally:
        reply.close()


def https_url(server: ScriptedServer, host: str = "127.0.0.1") -> str:
    return f"https://{host}:{server.port}/api/v1"


@pytest.fixture
async def proxy_factory() -> AsyncIterator[Any]:
    started: list[ForwardProxy] = []

    async def start(**kwargs: Any) -> ForwardProxy:
        proxy = ForwardProxy(hosts={PROVIDER_HOST: "127.0.0.1"}, **kwargs)
        await proxy.start()
        started.append(proxy)
        return proxy

    yield start
    for proxy in started:
        await proxy.close()


# -- private CA, mutual TLS, verification ------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
async def test_a_provider_behind_a_private_ca_is_trusted_through_ca_file_only(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(response()), tls=pki.server_context())
    untrusting = load_provider(https_url(server), client)
    with pytest.raises(ConnectFailed) as refused:
        await ask(make_transport(untrusting), untrusting)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(refused.value.__context__) + repr(refused.value.__cause__) \
        or "certificate" in str(refused.value).lower()
    trusting = load_provider(https_url(server), client, tls={"ca_file": str(pki.ca)})
    transport = make_transport(trusting)
    assert await ask(transport, trusting) == COMPLETION
    assert await ask(transport, trusting) == COMPLETION
    assert len(server.requests) == 2


@pytest.mark.parametrize("client", CLIENTS)
async def test_mutual_tls_presents_the_client_certificate(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory) -> None:
    certificates: list[Any] = []

    async def handle(request: Request, peer: Peer) -> None:
        certificates.append(peer.writer.get_extra_info("peercert"))
        peer.writer.write(response())

    server = await serve(handle, tls=pki.server_context(require_client_cert=True))
    anonymous = load_provider(https_url(server), client, tls={"ca_file": str(pki.ca)})
    with pytest.raises(TransportError):  # the server's alert comes at the handshake or at the first read
        await ask(make_transport(anonymous), anonymous)
    assert server.requests == []
    known = load_provider(https_url(server), client, tls={"ca_file": str(pki.ca), "client_cert": str(pki.client_cert),
                                                          "client_key": str(pki.client_key)})
    assert await ask(make_transport(known), known) == COMPLETION
    subject = dict(item for entry in certificates[0]["subject"] for item in entry)
    assert subject["commonName"] == "llm-router"


@pytest.mark.parametrize("client", CLIENTS)
async def test_verification_is_off_only_with_allow_insecure_next_to_it(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(response()), tls=pki.server_context())
    insecure = load_provider(https_url(server), client, tls={"verify": False, "allow_insecure": True})
    assert await ask(make_transport(insecure), insecure) == COMPLETION


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Another private CA with the same name as `pki`'s, and a server certificate it signed for the
    same host names: an impostor that only the CA's key tells apart."""
    return make_pki(tmp_path_factory.mktemp("other-pki"))


def tls_keys(pki: Pki, mutual: bool) -> dict[str, str]:
    """The provider's `tls` block: the private CA, and with `mutual` the router's client certificate."""
    keys = {"ca_file": str(pki.ca)}
    if mutual:
        keys |= {"client_cert": str(pki.client_cert), "client_key": str(pki.client_key)}
    return keys


def server_context(server_pki: Pki, client_ca: Pki, mutual: bool) -> ssl.SSLContext:
    """`server_pki`'s server certificate; with `mutual`, the router's certificate is required, and
    accepted (it is `client_ca`'s), so a refusal can only come from the router's side."""
    context = server_pki.server_context()
    if mutual:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(client_ca.ca)
    return context


def refused_for_its_certificate(error: ConnectFailed) -> str:
    """The TLS error behind a ConnectFailed (each client keeps its library's error as cause or context)."""
    chain = " ".join(repr(cause) for cause in (error.__cause__, error.__context__) if cause is not None)
    assert "CERTIFICATE_VERIFY_FAILED" in chain, (str(error), chain)
    return chain


@pytest.mark.parametrize("mutual", [False, True], ids=["ca_file", "mutual-tls"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_certificate_from_another_ca_than_ca_file_is_refused(
        client: str, mutual: bool, pki: Pki, other_pki: Pki, serve: ServerFactory,
        make_transport: TransportFactory) -> None:
    # `ca_file` replaces the system's trust store, it does not switch checking off: a certificate for
    # the right host from any other CA (here one with the very same name) fails the handshake, and the
    # request with its key never leaves the router.
    server = await serve(answer(response()), tls=server_context(other_pki, pki, mutual))
    provider = load_provider(https_url(server), client, tls=tls_keys(pki, mutual))
    with pytest.raises(ConnectFailed) as refused:
        await ask(make_transport(provider), provider)
    refused_for_its_certificate(refused.value)
    assert server.requests == []
    # The control: the same settings and the same server, its certificate now from the trusted CA.
    server = await serve(answer(response()), tls=server_context(pki, pki, mutual))
    provider = load_provider(https_url(server), client, tls=tls_keys(pki, mutual))
    assert await ask(make_transport(provider), provider) == COMPLETION


@pytest.mark.parametrize("mutual", [False, True], ids=["ca_file", "mutual-tls"])
@pytest.mark.parametrize("client", CLIENTS)
async def test_a_certificate_from_the_ca_file_for_another_host_is_refused(
        client: str, mutual: bool, pki: Pki, serve: ServerFactory, make_transport: TransportFactory) -> None:
    # The certificate is the trusted CA's, but for provider.test and 127.0.0.1: reached as `localhost`
    # (the same listening socket), the provider is not who the certificate names, and is refused.
    server = await serve(answer(response()), tls=server_context(pki, pki, mutual))
    provider = load_provider(https_url(server, "localhost"), client, tls=tls_keys(pki, mutual))
    with pytest.raises(ConnectFailed) as refused:
        await ask(make_transport(provider), provider)
    assert "localhost" in refused_for_its_certificate(refused.value)  # a host name mismatch, not the CA
    assert server.requests == []
    trusted = load_provider(https_url(server), client, tls=tls_keys(pki, mutual))  # the control: 127.0.0.1
    assert await ask(make_transport(trusted), trusted) == COMPLETION


def test_the_tls_block_is_checked_when_the_policy_loads(pki: Pki, tmp_path: Path) -> None:
    from router.errors import PolicyError

    url = "https://api.example.com/v1"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"verify": False}, "providers.p.tls.verify: `verify: false` sends the provider's API key"),
        ({"ca_file": str(tmp_path / "missing.pem")}, "providers.p.tls.ca_file: no such file"),
        ({"client_key": str(pki.client_key)}, "providers.p.tls.client_key: needs `client_cert`"),
        ({"ca_file": str(garbage)}, "providers.p.tls.ca_file: cannot load"),
        ({"client_cert": str(garbage)}, "providers.p.tls.client_cert: cannot load"),
        ({"client_cert": str(pki.client_cert), "client_key": str(pki.server_key)},
         "providers.p.tls.client_cert: cannot load"),  # a key that is not the certificate's
        ({"verify": True, "nope": 1}, "providers.p.tls.nope: unknown key `nope`"),
    ]
    for tls, message in cases:
        with pytest.raises(PolicyError, match="^<memory>: " + message.replace("(", r"\(").replace(")", r"\)")):
            load_provider(url, "fast", tls=tls)
    with pytest.raises(PolicyError, match=r"providers.p.tls: applies to an https:// base_url only"):
        load_provider("http://api.example.com/v1", "fast", tls={"ca_file": str(pki.ca)})
    assert load_provider("http://api.example.com/v1", "fast", tls={}).tls == load_provider(url, "fast").tls


# -- the proxy from the environment ----------------------------------------------------------------

@pytest.mark.parametrize("client", CLIENTS)
async def test_https_proxy_tunnels_to_a_provider_only_the_proxy_can_reach(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory, proxy_factory: Any) -> None:
    server = await serve(answer(response()), tls=pki.server_context())
    proxy = await proxy_factory()
    url = https_url(server, PROVIDER_HOST)
    provider = load_provider(url, client, {"HTTPS_PROXY": proxy.url}, tls={"ca_file": str(pki.ca)})
    assert provider.proxy is not None and provider.proxy.variable == "HTTPS_PROXY"
    transport = make_transport(provider)
    assert await ask(transport, provider) == COMPLETION
    assert await ask(transport, provider) == COMPLETION  # on the same tunnel, kept alive
    assert [(seen.method, seen.target) for seen in proxy.seen] == [("CONNECT", f"{PROVIDER_HOST}:{server.port}")]
    assert server.requests[0].header("Host") == f"{PROVIDER_HOST}:{server.port}"
    # The proxy only ever saw the CONNECT line: the request and its key went through TLS inside the tunnel.
    assert server.requests[0].header("Authorization") == f"Bearer {KEY}"
    assert all(seen.authorization is None for seen in proxy.seen)


@pytest.mark.parametrize("client", CLIENTS)
async def test_no_proxy_sends_the_provider_direct(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory, proxy_factory: Any) -> None:
    server = await serve(answer(response()), tls=pki.server_context())
    proxy = await proxy_factory()
    url = https_url(server, PROVIDER_HOST)
    for no_proxy in (PROVIDER_HOST, ".test", "*", f"other.example, {PROVIDER_HOST}"):
        provider = load_provider(url, client, {"https_proxy": proxy.url, "NO_PROXY": no_proxy},
                                 tls={"ca_file": str(pki.ca)})
        assert provider.proxy is None
        with pytest.raises(ConnectFailed):  # direct: nothing resolves provider.test
            await ask(make_transport(provider), provider)
    assert proxy.seen == [] and server.requests == []


@pytest.mark.parametrize("client", CLIENTS)
async def test_proxy_credentials_come_from_the_proxy_url(
        client: str, pki: Pki, serve: ServerFactory, make_transport: TransportFactory, proxy_factory: Any) -> None:
    server = await serve(answer(response()), tls=pki.server_context())
    proxy = await proxy_factory(credentials="router:s3cret/with@odd")
    url = https_url(server, PROVIDER_HOST)
    good = load_provider(url, client, {"HTTPS_PROXY": f"http://router:s3cret%2Fwith%40odd@127.0.0.1:{proxy.port}"},
                         tls={"ca_file": str(pki.ca)})
    assert "s3cret" not in repr(good)
    assert await ask(make_transport(good), good) == COMPLETION
    wrong = load_provider(url, client, {"HTTPS_PROXY": f"http://router:nope@127.0.0.1:{proxy.port}"},
                          tls={"ca_file": str(pki.ca)})
    with pytest.raises(ConnectFailed, match="407"):
        await ask(make_transport(wrong), wrong)
    assert [seen.answer for seen in proxy.seen] == [200, 407]
    assert len(server.requests) == 1


@pytest.mark.parametrize("client", CLIENTS)
async def test_http_proxy_forwards_an_http_provider_in_absolute_form(
        client: str, serve: ServerFactory, make_transport: TransportFactory, proxy_factory: Any) -> None:
    server = await serve(answer(response()))
    proxy = await proxy_factory(credentials="u:p")
    url = f"http://{PROVIDER_HOST}:{server.port}/api/v1"
    provider = load_provider(url, client, {"HTTP_PROXY": f"http://u:p@127.0.0.1:{proxy.port}",
                                           "HTTPS_PROXY": "http://127.0.0.1:9"})  # (for https only)
    assert await ask(make_transport(provider), provider) == COMPLETION
    assert [(seen.method, seen.target, seen.answer) for seen in proxy.seen] == [
        ("POST", f"{url}/chat/completions", 200)]
    assert server.requests[0].line == "POST /api/v1/chat/completions HTTP/1.1"
    assert "proxy-authorization" not in {name.lower() for name, _ in server.requests[0].headers}


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_loopback_provider_is_never_proxied(
        client: str, serve: ServerFactory, make_transport: TransportFactory) -> None:
    server = await serve(answer(response()))
    dead_proxy = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}
    for host in ("127.0.0.1", "localhost"):
        provider = load_provider(f"http://{host}:{server.port}/api/v1", client, dead_proxy)
        assert provider.proxy is None
        assert await ask(make_transport(provider), provider) == COMPLETION


@pytest.mark.parametrize("client", CLIENTS)
async def test_a_proxy_that_misbehaves_fails_the_connect_not_the_router(
        client: str, pki: Pki, make_transport: TransportFactory) -> None:
    # A hostile proxy: garbage, a refusal, bytes injected after its 200, silence then a close.
    answers = [b"SSH-2.0-OpenSSH_9.6\r\n\r\n", b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 200 OK\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}", b""]
    for data in answers:
        async def handle(request: Request, peer: Peer, data: bytes = data) -> None:
            peer.writer.write(data)
            peer.writer.close()

        fake_proxy = ScriptedServer(handle)
        await fake_proxy.start()
        try:
            provider = load_provider(f"https://{PROVIDER_HOST}:443/v1", client,
                                     {"HTTPS_PROXY": f"http://127.0.0.1:{fake_proxy.port}"},
                                     tls={"ca_file": str(pki.ca)})
            with pytest.raises(ConnectFailed):
                await ask(make_transport(provider), provider)
        finally:
            await fake_proxy.close()


def test_a_proxy_variable_is_checked_when_the_policy_loads() -> None:
    from router.errors import PolicyError

    url = "https://api.example.com/v1"
    for value, message in [
        ("https://proxy:3128", "only an http:// proxy is supported"),
        ("socks5://proxy:1080", "only an http:// proxy is supported"),
        ("http://user:secret@proxy:99999", "the port is not a number in 1-65535"),
        ("http://proxy:3128/path?x=1", "must be a proxy URL such as http://proxy.internal:3128"),
    ]:
        with pytest.raises(PolicyError) as info:
            load_provider(url, "fast", {"HTTPS_PROXY": value})
        assert str(info.value).startswith(f"<memory>: providers.p: environment variable HTTPS_PROXY: {message}")
        assert "secret" not in str(info.value)
    parsed = load_provider(url, "fast", {"HTTPS_PROXY": "proxy.internal:3128"}).proxy  # no scheme: http://
    assert parsed is not None and (parsed.host, parsed.port, parsed.authorization) == ("proxy.internal", 3128, None)
    assert load_provider(url, "fast", {"HTTPS_PROXY": ""}).proxy is None  # empty: unset
    assert load_provider(url, "fast", {"HTTP_PROXY": "http://proxy:3128"}).proxy is None  # not for https
    lower = load_provider(url, "fast", {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"}).proxy
    assert lower is not None and lower.host == "a"  # the lower-case spelling first, as curl and urllib read it


def test_ssl_default_context_is_shared_and_private_ones_are_not(pki: Pki) -> None:
    # The default settings share one context per client; a provider with its own settings gets its own.
    provider = load_provider("https://api.example.com/v1", "fast", tls={"ca_file": str(pki.ca)})
    assert isinstance(provider.tls.ssl_context(), ssl.SSLContext)
    assert provider.tls.ssl_context() is not provider.tls.ssl_context()
