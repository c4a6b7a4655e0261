"""The `providers` section: each provider's keys, its TLS settings, and the proxy the environment names.

Everything here is checked when the policy loads, so a missing CA file, a client certificate without
its key, or a malformed HTTPS_PROXY is a policy error naming where it comes from, not a failed
request later.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import socket
import ssl
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from urllib.parse import unquote, urlsplit

from router.policy import _fields as f
from router.policy._fields import Invalid
from router.policy.model import (
    BreakerPolicy,
    HealthProbe,
    MockSpec,
    Provider,
    ProviderLimits,
    Proxy,
    Timeouts,
    TlsSettings,
)

_timeouts = f.block(Timeouts, {"connect_s": f.positive, "first_byte_s": f.positive, "idle_s": f.positive})
_provider_limits = f.block(ProviderLimits, {
    "requests_per_minute": f.optional(f.positive),
    "tokens_per_minute": f.optional(f.at_least_one),
})
_breaker = f.block(
    BreakerPolicy,
    {"consecutive_failures": f.at_least_one, "base_ejection_s": f.positive, "max_ejection_s": f.positive},
    lambda obj, given, path: f.check_order(obj, given, "base_ejection_s", "max_ejection_s", path),
)
_mock = f.block(MockSpec, {
    "error_rates": f.error_rates,
    "retry_after": f.retry_after,
    "latency_s": f.non_negative,
    "chunks": f.at_least_one,
    "interval_s": f.non_negative,
    "content": f.optional(f.string),
    "seed": f.optional(f.integer),
})

# A probe's body is sent every interval while a provider is out: it must stay a small request.
MAX_PROBE_BODY_BYTES = 16 * 1024


def _probe_path(value: object, path: str) -> str:
    text = f.string(value, path)
    if not text.startswith("/") or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text):
        raise Invalid(f"must be a path after base_url starting with `/` (e.g. /models), got {f.describe(text)}",
                      path)
    return text


def _probe_body(value: object, path: str) -> Mapping[str, object]:
    body = f.mapping(value, path, "a chat-completion request body (a mapping with `model` and `messages`)")
    for key in ("model", "messages"):
        if key not in body:
            raise Invalid("is required in a probe body", f.join(path, key))
    if body.get("stream"):
        raise Invalid("a probe waits for a whole answer; remove `stream`", f.join(path, "stream"))
    size = len(json.dumps(body, default=str))
    if size > MAX_PROBE_BODY_BYTES:
        raise Invalid(f"is {size} bytes as JSON; a probe body may have at most {MAX_PROBE_BODY_BYTES}", path)
    return MappingProxyType(dict(body))


def _health_probe(value: object, path: str) -> HealthProbe:
    given = f.fields(f.section(value, path), path,
                     {"interval_s": f.positive, "path": _probe_path, "body": f.optional(_probe_body)})
    if "path" in given and given.get("body") is not None:
        raise Invalid("set `path` (a GET) or `body` (a POST to chat/completions), not both", f.join(path, "body"))
    return HealthProbe(**given)


def providers(value: object, path: str, env: Mapping[str, str]) -> Mapping[str, Provider]:
    return MappingProxyType({name: _provider(name, raw, entry_path, env)
                             for name, raw, entry_path in f.named_entries(value, path, "provider")})


def _provider(name: str, value: object, path: str, env: Mapping[str, str]) -> Provider:
    parsers = {
        "base_url": f.base_url,
        "api_key_env": f.optional(lambda raw, p: f.secret_env(env, raw, p)),
        "headers": f.headers,
        "timeouts": _timeouts,
        "limits": _provider_limits,
        "breaker": _breaker,
        "max_connections": f.at_least_one,
        "supports_prefill": f.boolean,
        "mock": f.optional(_mock),
        "allow_link_local": f.boolean,
        "http_client": lambda raw, p: f.choice(raw, p, ("fast", "aiohttp")),
        "max_response_bytes": lambda raw, p: f.integer(raw, p, ge=1024),
        "tls": _tls,
        "health_probe": f.optional(_health_probe),
    }
    given = f.fields(f.mapping(value, path), path, parsers, required=("base_url",))
    url = given["base_url"]
    if not given.get("allow_link_local", False):
        problem = _link_local_problem(url)
        if problem is not None:
            raise Invalid(f"{problem}; set `allow_link_local: true` on this provider if that is really "
                          "where it is", f.join(path, "base_url"))
    if given.get("mock") is not None and not f.is_loopback_url(url):
        # A mock must never impersonate a real provider on the network.
        raise Invalid("only a loopback base_url (127.0.0.1, ::1, localhost) may be mocked", f.join(path, "mock"))
    if given.get("tls", TlsSettings()) != TlsSettings() and not url.startswith("https://"):
        raise Invalid("applies to an https:// base_url only", f.join(path, "tls"))
    api_key_env = given.get("api_key_env")
    return Provider(name=name, api_key=None if api_key_env is None else env[api_key_env],
                    proxy=proxy_for(url, env, path), **given)


# -- tls -----------------------------------------------------------------------------------------

def _pem_file(value: object, path: str) -> str:
    name = f.string(value, path)
    if not Path(name).is_file():
        raise Invalid(f"no such file: {name}", path)
    return name


def _tls(value: object, path: str) -> TlsSettings:
    parsers = {"ca_file": f.optional(_pem_file), "client_cert": f.optional(_pem_file),
               "client_key": f.optional(_pem_file), "verify": f.boolean, "allow_insecure": f.boolean}
    given = f.fields(f.section(value, path), path, parsers)
    settings = TlsSettings(**given)
    if not settings.verify and not settings.allow_insecure:
        # One key is too easy to flip (or to copy from a forum answer): turning verification off takes two.
        raise Invalid("`verify: false` sends the provider's API key to whoever answers; write "
                      "`allow_insecure: true` next to it if that is really meant", f.join(path, "verify"))
    if settings.client_key is not None and settings.client_cert is None:
        raise Invalid("needs `client_cert` (the certificate this key belongs to)", f.join(path, "client_key"))
    try:
        settings.ssl_context()  # the files must load now, not at the first request
    except ssl.SSLError as exc:
        key = "ca_file" if settings.client_cert is None or "verify" in str(exc).lower() else "client_cert"
        raise Invalid(f"cannot load: {exc.reason or exc}", f.join(path, key)) from None
    except OSError as exc:
        raise Invalid(f"cannot read: {exc.strerror or exc}", path) from None
    return settings


# -- the proxy from the environment ----------------------------------------------------------------

_PROXY_VARIABLES = {"https": ("https_proxy", "HTTPS_PROXY"), "http": ("http_proxy", "HTTP_PROXY")}


def proxy_for(url: str, env: Mapping[str, str], path: str) -> Proxy | None:
    """The proxy for a provider at `url`, as curl and Python's urllib read the environment: HTTPS_PROXY
    for an https URL, HTTP_PROXY for an http one (the lower-case spelling first), none if NO_PROXY names
    its host. A loopback provider is always reached directly (as Go's net/http does): the demo's
    providers keep working behind a corporate proxy."""
    parts = urlsplit(url)
    if f.is_loopback_url(url):
        return None
    found = next(((name, env[name]) for name in _PROXY_VARIABLES[parts.scheme] if env.get(name)), None)
    if found is None:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if no_proxy and urllib.request.proxy_bypass_environment(parts.netloc, {"no": no_proxy}):
        return None
    return _proxy(*found, path)


def _proxy(variable: str, value: str, path: str) -> Proxy:
    # The value is never echoed: it may carry a password.
    where = f"environment variable {variable}"
    parts = urlsplit(value if "://" in value else "http://" + value)
    if parts.scheme != "http":
        raise Invalid(f"{where}: only an http:// proxy is supported (the tunnel to an https provider is "
                      f"TLS end to end either way), got {parts.scheme}://", path)
    try:
        host, port = parts.hostname, parts.port or 80
    except ValueError:
        raise Invalid(f"{where}: the port is not a number in 1-65535", path) from None
    if not host or parts.path not in ("", "/") or parts.query or parts.fragment:
        raise Invalid(f"{where}: must be a proxy URL such as http://proxy.internal:3128", path)
    authorization = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        authorization = "Basic " + base64.b64encode(credentials).decode()
    return Proxy(host=host, port=port, variable=variable, authorization=authorization)


# -- link-local and metadata addresses -----------------------------------------------------------

# Instance-metadata services hand the machine's cloud credentials to whoever asks from it; they
# live at link-local addresses and a few well-known names. A provider URL pointing there is a
# mistake or an attack (server-side request forgery), unless the operator says otherwise.
_METADATA_HOSTS = frozenset({"metadata.google.internal", "metadata.goog", "metadata", "instance-data",
                             "instance-data.ec2.internal"})
_METADATA_ADDRESSES = frozenset(map(ipaddress.ip_address, ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")))


def _link_local_problem(url: str) -> str | None:
    """Why `url` (already a valid http(s) URL) must not be a provider's, or None."""
    host = (urlsplit(url).hostname or "").rstrip(".").lower()
    if host in _METADATA_HOSTS:
        return f"points at the cloud metadata service `{host}`"
    address = _ip_address(host)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in _METADATA_ADDRESSES:
        return f"points at the cloud metadata address {address}"
    if address is not None and address.is_link_local:
        return f"points at the link-local address {address} (169.254.0.0/16, fe80::/10)"
    return None


def _ip_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names literally, including the legacy IPv4 spellings the C resolver
    accepts (`2852039166`, `0251.0376.0251.0376`, `0xa9.0xfe.43518`); None for a DNS name."""
    try:
        return ipaddress.ip_address(host.partition("%")[0])  # an IPv6 zone id (`%eth0`) is not the address
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):  # ValueError: a NUL in the name
        return None
