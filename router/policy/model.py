"""The policy as frozen value objects.

The loader turns YAML into these once; nothing below the loader sees a raw dict.
Every default lives here, next to the field it belongs to, and the README's key
reference table is checked against these dataclasses by a test.
"""

from __future__ import annotations

import fnmatch
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Strategy = Literal["weighted", "least_busy", "adaptive"]
StateBackendName = Literal["memory", "redis"]
OnStateError = Literal["local", "allow", "deny"]

MODEL_PLACEHOLDER = "{model}"


def _empty_mapping() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Per-try timeouts; each is also capped by the request's remaining deadline."""

    connect_s: float = 5.0
    first_byte_s: float = 30.0  # until the response headers arrive
    idle_s: float = 30.0  # between two stream chunks (and while reading a body)


@dataclass(frozen=True, slots=True)
class ProviderLimits:
    """Our quota at the provider; the planner skips a provider that would answer 429."""

    requests_per_minute: float | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    base_ejection_s: float = 5.0
    # The longest ejection, so also the longest a recovered provider waits to be tried again: 8 s
    # keeps "back within 10 s of recovering" true after an outage of any length, with 2 s for the
    # next request to arrive and be answered.
    max_ejection_s: float = 8.0


@dataclass(frozen=True, slots=True)
class HealthProbe:
    """Probe an ejected provider out of band, so no client request is spent finding out it is back."""

    interval_s: float = 5.0
    path: str = "/models"  # GET base_url + path; a 2xx means healthy
    # Instead of the GET: POST this chat-completion body (a small request) to base_url/chat/completions.
    body: Mapping[str, object] | None = None


@dataclass(frozen=True, slots=True)
class MockSpec:
    """Demo only: the daemon itself runs a fake provider at this (loopback) base_url."""

    error_rates: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    retry_after: str = "1"
    latency_s: float = 0.0
    chunks: int = 5
    interval_s: float = 0.0
    content: str | None = None
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TlsSettings:
    """How the router checks an https provider, and proves who it is (mTLS)."""

    ca_file: str | None = None  # PEM: the CAs trusted for this provider, instead of the system's
    client_cert: str | None = None  # PEM: the router's certificate (and its key, unless client_key)
    client_key: str | None = None
    verify: bool = True  # false only with allow_insecure: true next to it (the loader enforces it)
    allow_insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        """A client context for these settings (the files are read now: a reload picks up new ones)."""
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.client_cert is not None:
            context.load_cert_chain(self.client_cert, self.client_key)
        if not self.verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


@dataclass(frozen=True, slots=True)
class Proxy:
    """The HTTP proxy a provider is reached through, from the environment (HTTPS_PROXY or HTTP_PROXY,
    unless NO_PROXY names the provider). An https provider is reached through a CONNECT tunnel, an
    http one by asking the proxy for the absolute URL."""

    host: str
    port: int
    variable: str  # the environment variable it came from, for messages
    # The Proxy-Authorization value (Basic) from the URL's user:password; never printed.
    authorization: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://[{self.host}]:{self.port}" if ":" in self.host else f"http://{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Provider:
    name: str
    base_url: str  # without trailing slash, e.g. https://api.asi1.ai/v1
    api_key_env: str | None = None
    # Resolved from api_key_env when the policy is loaded; never printed.
    api_key: str | None = field(default=None, repr=False, compare=False)
    headers: Mapping[str, str] = field(default_factory=_empty_mapping)
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: ProviderLimits = field(default_factory=ProviderLimits)
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    max_connections: int = 100
    supports_prefill: bool = False
    mock: MockSpec | None = None
    allow_link_local: bool = False  # base_url may be a link-local or cloud-metadata address
    # `fast`: the router's own HTTP/1.1 client (router/upstream/http1/); `aiohttp`: aiohttp's ClientSession.
    http_client: str = "fast"
    # The most an answer may hold, counted after decompression: a provider's gzip bomb or endless body
    # fails over instead of filling the router's memory.
    max_response_bytes: int = 32 * 1024 * 1024
    tls: TlsSettings = field(default_factory=TlsSettings)
    # Resolved from the environment when the policy is loaded (see Proxy); None: a direct connection.
    proxy: Proxy | None = None
    health_probe: HealthProbe | None = None

    @property
    def chat_url(self) -> str:
        return self.base_url + "/chat/completions"


@dataclass(frozen=True, slots=True)
class Target:
    """One place a route may send a request: a provider and the model name to ask it for."""

    provider: str
    model: str  # may be "{model}": forward the name the client asked for
    priority: int = 0  # failover tier, lower first
    weight: float = 1.0  # share inside a tier
    # Identity for breaker and metrics state: bounded by the policy, not by client input.
    # Computed once: it is read several times per request.
    key: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.provider}/{self.model}")

    def upstream_model(self, requested: str) -> str:
        return self.model.replace(MODEL_PLACEHOLDER, requested) if MODEL_PLACEHOLDER in self.model else self.model


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int = 3
    max_attempts_per_target: int = 2
    base_interval_s: float = 0.25
    max_interval_s: float = 8.0
    wait_for_preferred_s: float = 5.0


@dataclass(frozen=True, slots=True)
class AdaptivePolicy:
    """`strategy: adaptive`: how fast latency estimates forget, and how much traffic explores."""

    half_life_s: float = 10.0
    explore_percent: float = 5.0


@dataclass(frozen=True, slots=True)
class HedgePolicy:
    """A second attempt when the first has not started answering after a delay (first-token hedging)."""

    after_s: float = 1.0
    # Instead of a fixed delay: this quantile of the target's observed time to first byte (after_s
    # until enough samples are in).
    after_quantile: float | None = None
    max_percent: float = 5.0  # hedges, as a share of the route's requests over the last 10 s


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the `model` a client asks for; may be a glob ("*:deepseek-chat-v3")
    targets: tuple[Target, ...]
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    deadline_s: float = 60.0
    ttft_s: float | None = None  # streams: fail over if the first token is slower
    strategy: Strategy = "weighted"
    adaptive: AdaptivePolicy = field(default_factory=AdaptivePolicy)
    hedge: HedgePolicy | None = None
    is_pattern: bool = field(init=False, repr=False, compare=False, default=False)  # a glob route
    # Whether its successes feed the targets' latency estimates (adaptive choice, a quantile hedge):
    # other routes skip that work on every request.
    learns: bool = field(init=False, repr=False, compare=False, default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "is_pattern", any(ch in self.name for ch in "*?["))
        object.__setattr__(self, "learns", self.strategy == "adaptive"
                           or (self.hedge is not None and self.hedge.after_quantile is not None))


@dataclass(frozen=True, slots=True)
class ClientLimits:
    requests_per_second: float | None = None
    burst: int | None = None  # defaults to max(1, requests_per_second)
    tokens_per_minute: int | None = None
    queue_s: float = 0.0  # wait up to this long for capacity instead of answering 429 at once


@dataclass(frozen=True, slots=True)
class Client:
    name: str
    key_env: str | None = None
    key_sha256: str | None = None  # hex digest, an alternative to key_env
    key: str | None = field(default=None, repr=False, compare=False)
    limits: ClientLimits = field(default_factory=ClientLimits)
    routes: tuple[str, ...] | None = None  # allowed route names; None = all

    def may_use(self, route_name: str) -> bool:
        return self.routes is None or route_name in self.routes


@dataclass(frozen=True, slots=True)
class RetryBudget:
    """Envoy/Finagle-style: retries may not exceed `percent` of recent requests plus a floor."""

    percent: float = 20.0
    min_per_second: float = 5.0
    window_s: float = 10.0


@dataclass(frozen=True, slots=True)
class StatePolicy:
    backend: StateBackendName = "memory"
    url: str | None = field(default=None, repr=False)  # may carry a password: never printed
    key_prefix: str = "llm_router:"
    timeout_ms: int = 50
    on_error: OnStateError = "local"
    replicas: int = 1  # used by on_error=local to enforce this replica's share of a limit


@dataclass(frozen=True, slots=True)
class AdminPolicy:
    """The admin listener (live state, status page, drain/restore/reload): off unless `server.admin` is set."""

    host: str = "127.0.0.1"
    port: int = 9091
    key_env: str | None = None  # required unless host is loopback
    # Resolved from key_env when the policy is loaded; never printed.
    key: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    host: str = "127.0.0.1"
    port: int = 8080
    max_body_bytes: int = 4 * 1024 * 1024
    drain_timeout_s: float = 30.0
    head_timeout_s: float = 10.0  # a request head must be complete within this (slowloris)
    keepalive_s: float = 75.0  # a keep-alive connection with no request for this long is closed
    max_connections: int = 10_000  # open client connections; one more is refused with a 503
    event_loop: str = "auto"  # auto (uvloop where installed) | uvloop | asyncio
    admin: AdminPolicy | None = None


@dataclass(frozen=True, slots=True)
class Policy:
    providers: Mapping[str, Provider]
    routes: Mapping[str, Route]
    clients: tuple[Client, ...] = ()
    retry_budget: RetryBudget = field(default_factory=RetryBudget)
    state: StatePolicy = field(default_factory=StatePolicy)
    server: ServerPolicy = field(default_factory=ServerPolicy)
    version: int = 1
    source: str = "<memory>"  # file the policy came from, for error messages

    def find_route(self, requested_model: str) -> Route | None:
        """Exact names first, then glob patterns in file order. Model ids stay opaque strings."""
        route = self.routes.get(requested_model)
        if route is not None and not route.is_pattern:
            return route
        for candidate in self.routes.values():
            if candidate.is_pattern and fnmatch.fnmatchcase(requested_model, candidate.name):
                return candidate
        return None

    def client_named(self, name: str) -> Client | None:
        for client in self.clients:
            if client.name == name:
                return client
        return None
