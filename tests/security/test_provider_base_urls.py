"""Provider base URLs may not point at link-local or cloud-metadata addresses unless allowed.

A metadata service (169.254.169.254 and friends) hands instance credentials to any
process on the machine that asks; a policy that routed chat requests there, by a
typo or by a malicious edit, would turn the router into a way to reach it. The
loader refuses such a `base_url` with an error naming the key path, unless the
provider says `allow_link_local: true`. Loopback stays allowed (tests, the demo).
"""

from __future__ import annotations

import pytest
import yaml

from router.errors import PolicyError
from router.policy import Policy, parse_policy


def policy_with(base_url: str, **provider: object) -> str:
    return yaml.safe_dump({
        "providers": {"x": {"base_url": base_url, **provider}},
        "routes": {"chat": {"targets": [{"provider": "x", "model": "m"}]}},
    }, sort_keys=False)


def load(base_url: str, **provider: object) -> Policy:
    return parse_policy(policy_with(base_url, **provider), source="policy.yaml", env={})


def refused(base_url: str, **provider: object) -> PolicyError:
    with pytest.raises(PolicyError) as caught:
        load(base_url, **provider)
    return caught.value


LINK_LOCAL = [
    "http://169.254.0.1/v1",
    "http://169.254.255.254:8080/v1",
    "https://169.254.170.2/v2/credentials",  # ECS task metadata
    "http://[fe80::1]/v1",
    "http://[fe80::1%25eth0]:8080/v1",  # with a zone id
    "http://[fe80::1%25]/v1",  # with an empty zone id
    "http://[febf:ffff::1]/v1",  # the top of fe80::/10
    "http://[::ffff:169.254.10.10]/v1",  # IPv4-mapped
]
METADATA = [
    "http://169.254.169.254/latest/meta-data",  # AWS, Azure, GCP, OCI, DigitalOcean
    "http://[fd00:ec2::254]/latest",  # AWS over IPv6
    "http://metadata.google.internal/computeMetadata/v1",
    "http://METADATA.Google.Internal./computeMetadata/v1",  # case and a trailing dot
    "http://metadata.goog/computeMetadata/v1",
    "http://100.100.100.200/latest/meta-data",  # Alibaba Cloud
    "http://[::ffff:100.100.100.200]/latest",
]
# The same addresses spelled the ways the C resolver still accepts (inet_aton).
OBFUSCATED = [
    "http://2852039166/latest",  # 169.254.169.254 as one number
    "http://0xa9fea9fe/latest",
    "http://0251.0376.0251.0376/latest",  # octal
    "http://0xa9.0xfe.0xa9.0xfe/latest",
    "http://169.254.43518/latest",  # a.b.c form
    "http://169.254.169.254./latest",  # trailing dot
]


@pytest.mark.parametrize("url", LINK_LOCAL + METADATA + OBFUSCATED)
def test_link_local_and_metadata_base_urls_are_refused_naming_the_key(url: str) -> None:
    error = refused(url)

    assert error.path == "providers.x.base_url"
    assert str(error).startswith("policy.yaml: providers.x.base_url: ")
    assert "allow_link_local: true" in error.problem  # says how to allow it on purpose


@pytest.mark.parametrize("url", METADATA[:2] + LINK_LOCAL[:1])
def test_the_error_says_what_the_address_is(url: str) -> None:
    problem = refused(url).problem
    kind = "metadata" if url in METADATA else "link-local"
    assert kind in problem


@pytest.mark.parametrize("url", LINK_LOCAL + METADATA + OBFUSCATED)
def test_allow_link_local_lets_the_provider_use_them(url: str) -> None:
    policy = load(url, allow_link_local=True)

    provider = policy.providers["x"]
    assert provider.allow_link_local is True
    assert provider.chat_url.endswith("/chat/completions")


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9101/v1", "http://127.8.9.10/v1", "http://localhost:9101/v1", "http://[::1]:9101/v1",
    "https://api.asi1.ai/v1", "https://devnet.aimo.network/api/v1", "http://10.0.0.5/v1", "http://[fd00::5]/v1",
    "http://169.253.255.255/v1", "http://169.255.0.1/v1", "http://[fec0::1]/v1", "http://100.100.100.201/v1",
    "http://metadata.example.com/v1", "http://google.internal/v1",
])
def test_loopback_private_and_public_addresses_stay_allowed(url: str) -> None:
    provider = load(url).providers["x"]
    assert provider.allow_link_local is False


def test_the_default_is_false_and_false_can_be_written() -> None:
    assert load("https://api.asi1.ai/v1").providers["x"].allow_link_local is False
    assert refused("http://169.254.169.254/v1", allow_link_local=False).path == "providers.x.base_url"


def test_allow_link_local_must_be_a_boolean() -> None:
    error = refused("http://169.254.169.254/v1", allow_link_local="yes")
    assert error.path == "providers.x.allow_link_local"
    assert "true or false" in error.problem


def test_allowing_one_provider_does_not_allow_another() -> None:
    text = yaml.safe_dump({
        "providers": {"ok": {"base_url": "http://169.254.169.254/v1", "allow_link_local": True},
                      "other": {"base_url": "http://[fe80::2]/v1"}},
        "routes": {"chat": {"targets": [{"provider": "ok", "model": "m"}, {"provider": "other", "model": "m"}]}},
    }, sort_keys=False)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, env={})
    assert caught.value.path == "providers.other.base_url"


def test_a_key_written_before_base_url_is_still_honoured() -> None:
    text = ("providers:\n  x:\n    allow_link_local: true\n    base_url: http://169.254.169.254/v1\n"
            "routes:\n  chat: {targets: [{provider: x, model: m}]}\n")
    assert parse_policy(text, env={}).providers["x"].allow_link_local is True


@pytest.mark.parametrize("url", ["http://a\x00b/v1", "http://1\x00/v1"])
def test_odd_hosts_load_or_fail_cleanly(url: str) -> None:
    try:
        load(url)
    except PolicyError as error:
        assert error.path == "providers.x.base_url"
