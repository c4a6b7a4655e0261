"""Counts reconcile with reality: a scripted mix of traffic through the daemon, then /metrics.

Fake providers on loopback record every attempt (`FakeProvider.hits`) and the test
records every status the client saw. After the mix, each counter of the daemon's
/metrics must equal those records: attempts per provider and outcome are the hits,
requests per route/client/outcome are the answers, tokens are the `usage` the client
received, and every histogram's `_count` equals the matching count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp

from router.mock import Hit, Ok, Status, Stream
from router.observe.observer import UNKNOWN_ROUTE
from tests.metrics.conftest import MetricsDaemon
from tests.metrics.helpers import Scrape
from tests.server.helpers import bearer, sse_data
from tests.support.policies import CLIENT_ENV, CLIENT_KEY, make_policy, provider_block, route_block

TINY_ENV, TINY_KEY = "TEST_CLIENT_TINY_KEY", "client-key-tiny-456"
NO_WAIT = {"max_attempts": 3, "max_attempts_per_target": 2, "wait_for_preferred_s": 0}
# Status the provider sent -> the attempt outcome the router must report.
OUTCOME_OF_STATUS = {200: "ok", 429: "rate_limited", 500: "server_error", 503: "server_error"}


@dataclass
class Sent:
    """One request as the client saw it, and what the script expects the router to call it."""

    route: str
    client: str
    outcome: str
    status: int
    provider: str | None = None  # x-router-provider
    usage: dict[str, int] | None = None


class Client:
    def __init__(self, http: aiohttp.ClientSession, daemon: MetricsDaemon) -> None:
        self.http = http
        self.daemon = daemon
        self.sent: list[Sent] = []

    async def send(self, body: dict[str, Any] | str, *, route: str, outcome: str, status: int,
                   client: str = "web", key: str | None = CLIENT_KEY) -> Sent:
        headers = bearer(key) if key else {}
        kwargs: dict[str, Any] = {"data": body} if isinstance(body, str) else {"json": body}
        async with self.http.post(self.daemon.chat_url, headers=headers, **kwargs) as response:
            raw = await response.read()
            assert response.status == status, (body, raw)
            provider = response.headers.get("x-router-provider")
            usage = None
            if response.status == 200:
                if response.content_type == "text/event-stream":
                    for data in sse_data(raw):
                        if data != "[DONE]" and data.startswith("{") and json.loads(data).get("usage"):
                            usage = json.loads(data)["usage"]
                else:
                    usage = json.loads(raw)["usage"]
        sent = Sent(route, client, outcome, response.status, provider if provider != "none" else None, usage)
        self.sent.append(sent)
        return sent


def chat(model: str = "chat", **fields: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Count to three, please."}], **fields}


def attempt_outcome(hit: Hit) -> str:
    return "cancelled" if hit.disconnected else OUTCOME_OF_STATUS[hit.status or 0]


async def test_every_counter_equals_what_the_providers_and_the_client_saw(fake_provider, metrics_daemon,
                                                                          http) -> None:
    alpha, beta, gamma, delta = [await fake_provider(name) for name in ("alpha", "beta", "gamma", "delta")]
    fragile_breaker = {"consecutive_failures": 1, "base_ejection_s": 30.0, "max_ejection_s": 30.0}
    policy = make_policy(
        {"alpha": provider_block(alpha), "beta": provider_block(beta), "gamma": provider_block(gamma),
         "delta": provider_block(delta, breaker=fragile_breaker)},
        {"chat": route_block(("alpha", "alpha-m"), ("beta", "beta-m"), retry=NO_WAIT),
         "gamma-only": route_block(("gamma", "gamma-m"), retry=NO_WAIT),
         "fragile": route_block(("delta", "delta-m"), ("beta", "beta-m"), retry=NO_WAIT)},
        env={TINY_ENV: TINY_KEY},
        clients=[{"name": "web", "key_env": CLIENT_ENV},
                 {"name": "tiny", "key_env": TINY_ENV, "limits": {"requests_per_second": 0.001, "burst": 1}}],
        retry_budget={"percent": 100, "min_per_second": 100})
    daemon = await metrics_daemon(policy)
    client = Client(http, daemon)
    started = time.monotonic()

    # Successes on the first try.
    for _ in range(3):
        await client.send(chat(), route="chat", outcome="success", status=200)
    # 503 then a success on the same provider: one retry.
    alpha.script(Status.unavailable())
    await client.send(chat(), route="chat", outcome="success", status=200)
    # Two 503s, then failover to beta.
    alpha.script(Status.unavailable(), Status.unavailable())
    await client.send(chat(), route="chat", outcome="success", status=200)
    # Everything fails: 502 after max_attempts.
    alpha.script(Status.unavailable(), Status.unavailable())
    beta.script(Status.unavailable())
    await client.send(chat(), route="chat", outcome="server_error", status=502)
    # Streams: one with usage, one with a malformed event, one that fails over before its first event.
    await client.send(chat(stream=True, stream_options={"include_usage": True}), route="chat", outcome="success",
                      status=200)
    alpha.script(Stream(chunks=5, malformed_at=2))
    await client.send(chat(stream=True), route="chat", outcome="success", status=200)
    alpha.script(Status.server_error(500), Status.server_error(500))
    await client.send(chat(stream=True), route="chat", outcome="success", status=200)
    # A breaker that opens on the first failure: delta is ejected, beta answers.
    delta.script(Status.server_error(500))
    await client.send(chat("fragile"), route="fragile", outcome="success", status=200)
    # The only provider of a route answers 429: the client gets 429 too.
    gamma.script(Status.rate_limited("1"))
    await client.send(chat("gamma-only"), route="gamma-only", outcome="providers_rate_limited", status=429)
    # A client over its own limit (burst 1).
    await client.send(chat(), route="chat", client="tiny", key=TINY_KEY, outcome="success", status=200)
    await client.send(chat(), route="chat", client="tiny", key=TINY_KEY, outcome="rate_limited", status=429)
    # A client that goes away in the middle of a stream.
    alpha.script(Ok(chunks=8, interval_s=0.05))
    async with http.post(daemon.chat_url, json=chat(stream=True), headers=bearer()) as response:
        assert response.status == 200
        await response.content.readany()
        response.close()
    client.sent.append(Sent("chat", "web", "cancelled", 200, "alpha"))
    await alpha.wait_until(lambda: alpha.hits[-1].ended is not None, within_s=5)
    # alpha answers 429 with Retry-After: it is paused and the request fails over (last on this route:
    # alpha stays paused for a second).
    alpha.script(Status.rate_limited("1"))
    await client.send(chat(), route="chat", outcome="success", status=200)
    # Refused before a route is known: unknown model, bad key, invalid body.
    await client.send(chat("no-such-model"), route=UNKNOWN_ROUTE, outcome="model_not_found", status=404)
    await client.send(chat(), route=UNKNOWN_ROUTE, client="-", key="wrong-key", outcome="invalid_api_key",
                      status=401)
    await client.send({"model": "chat"}, route=UNKNOWN_ROUTE, outcome="invalid_request_error", status=400)
    await client.send("{not json", route=UNKNOWN_ROUTE, outcome="invalid_request_error", status=400)
    elapsed = time.monotonic() - started

    scrape = await _settled_scrape(http, daemon)
    sent = client.sent
    hits = {fake.name: fake.hits for fake in (alpha, beta, gamma, delta)}

    # -- what the client saw -------------------------------------------------------------------
    observed = Counter((s.route, s.client, s.outcome) for s in sent)
    assert _labelled(scrape, "llm_router_requests_total", "route", "client", "outcome") == observed
    by_route_outcome = Counter((s.route, s.outcome) for s in sent)
    assert _labelled(scrape, "llm_router_request_duration_seconds_count", "route", "outcome") == by_route_outcome
    for (route, outcome), count in by_route_outcome.items():
        assert scrape.get("llm_router_request_duration_seconds_bucket", route=route, outcome=outcome,
                          le="+Inf") == count
    assert scrape.get("llm_router_request_duration_seconds_sum") <= elapsed
    assert set(scrape.series("llm_router_requests_in_flight").values()) == {0.0}
    assert scrape.get("llm_router_client_rate_limited_total", client="tiny", kind="requests") == 1
    assert scrape.get("llm_router_client_rate_limited_total") == 1

    # -- what the providers saw ----------------------------------------------------------------
    from_hits = Counter((name, attempt_outcome(hit)) for name, provider_hits in hits.items() for hit in provider_hits)
    assert _labelled(scrape, "llm_router_upstream_attempts_total", "provider", "outcome") == from_hits
    assert _labelled(scrape, "llm_router_upstream_attempt_duration_seconds_count", "provider", "outcome") == from_hits
    assert from_hits[("alpha", "cancelled")] == 1
    with_headers = Counter(name for name, provider_hits in hits.items() for hit in provider_hits if hit.status)
    assert _labelled(scrape, "llm_router_upstream_ttfb_seconds_count", "provider") == \
        Counter({(name,): n for name, n in with_headers.items()})
    assert scrape.get("llm_router_upstream_attempts_total", route="fragile") == len(delta.hits) + 1
    assert scrape.get("llm_router_upstream_attempts_total", route="gamma-only") == len(gamma.hits) == 1
    throttled = Counter(name for name, provider_hits in hits.items() for hit in provider_hits if hit.status == 429)
    assert _labelled(scrape, "llm_router_provider_throttled_total", "provider") == \
        Counter({(name,): n for name, n in throttled.items()}) == Counter({("alpha",): 1, ("gamma",): 1})

    # -- decisions, as scripted ----------------------------------------------------------------
    assert _labelled(scrape, "llm_router_retries_total", "route", "reason") == Counter({
        ("chat", "server_error"): 1 + 2 + 2 + 2, ("chat", "rate_limited"): 1, ("fragile", "server_error"): 1})
    assert _labelled(scrape, "llm_router_failovers_total", "route", "from_provider", "to_provider") == Counter({
        ("chat", "alpha", "beta"): 4, ("fragile", "delta", "beta"): 1})
    assert scrape.series("llm_router_retry_budget_exhausted_total") == {}
    assert scrape.series("llm_router_breaker_state") == {(("provider", "delta"), ("target", "delta/delta-m")): 1.0}
    assert scrape.series("llm_router_breaker_ejections_total") == {
        (("provider", "delta"), ("target", "delta/delta-m")): 1.0}
    assert scrape.series("llm_router_malformed_events_total") == {(("provider", "alpha"),): 1.0}

    # -- stream chunk gaps: one per upstream event after the first -------------------------------
    # Ok(chunks=4) as a stream: role, 4 pieces, finish, [usage], [DONE]; the malformed one: role, 5 pieces,
    # the broken event, finish, [DONE]. The cancelled stream adds at least one gap on alpha.
    full_alpha = (8 - 1) + (9 - 1)
    full_beta = 7 - 1
    assert scrape.get("llm_router_stream_chunk_gap_seconds_count", provider="beta") == full_beta
    assert full_alpha < scrape.get("llm_router_stream_chunk_gap_seconds_count", provider="alpha") < full_alpha + 12

    # -- tokens: exactly the usage the client received ------------------------------------------
    tokens: Counter[tuple[str, ...]] = Counter()
    for s in sent:
        if s.usage is not None:
            tokens[(s.route, s.provider or "", "prompt")] += s.usage["prompt_tokens"]
            tokens[(s.route, s.provider or "", "completion")] += s.usage["completion_tokens"]
    assert _labelled(scrape, "llm_router_tokens_total", "route", "provider", "kind") == tokens
    assert sum(1 for s in sent if s.usage) == 9  # 8 JSON answers, 1 stream asking for usage

    assert scrape.series("llm_router_config_reloads_total") == {}
    assert scrape.get("llm_router_build_info") == 1


async def _settled_scrape(http: aiohttp.ClientSession, daemon: MetricsDaemon) -> Scrape:
    """A scrape once nothing is in flight (the cancelled stream finishes asynchronously)."""
    deadline = time.monotonic() + 5
    while True:
        scrape = await daemon.scrape(http)
        if set(scrape.series("llm_router_requests_in_flight").values()) == {0.0} or time.monotonic() > deadline:
            return scrape
        await asyncio.sleep(0.02)


def _labelled(scrape: Scrape, name: str, *labels: str) -> Counter[tuple[str, ...]]:
    """The series of `name` as a Counter keyed by the values of `labels` (zero values dropped)."""
    out: Counter[tuple[str, ...]] = Counter()
    for items, value in scrape.series(name).items():
        if value:
            values = dict(items)
            out[tuple(values[label] for label in labels)] += int(value)
    return out
