"""Label cardinality stays bounded: 10,000 requests with random model names add no label values.

Requests go through `Router.chat` with an in-memory transport (no sockets), half to
a glob route that forwards the requested name upstream (`{model}`), half to names no
route matches; some upstream answers fail so outcomes, retries, failovers and
breaker changes show up too.
"""

from __future__ import annotations

import random
import uuid

import pytest

from router import RouterError
from router.observe.observer import UNKNOWN_ROUTE
from router.observe.prometheus import PrometheusObserver
from router.router import Router
from router.upstream.transport import Outgoing
from tests.metrics.helpers import Scrape, error, ok, policy
from tests.support.memory import MemoryReply, MemoryTransport

REQUESTS = 10_000


@pytest.mark.slow
async def test_random_model_names_never_become_label_values() -> None:
    rng = random.Random(7)

    def flaky(outgoing: Outgoing) -> MemoryReply:
        roll = rng.random()
        if roll < 0.1:
            return error(500)
        if roll < 0.15:
            return error(429, {"Retry-After": "0"})
        return ok(outgoing)

    breaker = {"consecutive_failures": 2, "base_ejection_s": 0.001, "max_ejection_s": 0.001}
    providers = {name: {"base_url": f"http://{name}.test/v1", "breaker": breaker} for name in ("a", "b")}
    glob = {"targets": [{"provider": "a", "model": "{model}", "priority": 0},
                        {"provider": "b", "model": "{model}", "priority": 1}],
            "retry": {"base_interval_s": 0.001, "max_interval_s": 0.001, "wait_for_preferred_s": 0}}
    observer = PrometheusObserver()
    router = Router(policy(providers, {"free-*": glob}, retry_budget={"percent": 100, "min_per_second": 1000}),
                    transport=MemoryTransport(a=flaky, b=flaky), observer=observer)
    names: set[str] = set()
    outcomes: dict[str, int] = {}
    for index in range(REQUESTS):
        name = f"free-{uuid.UUID(int=rng.getrandbits(128))}" if index % 2 else uuid.UUID(int=rng.getrandbits(128)).hex
        names.add(name)
        try:
            await router.chat({"model": name, "messages": [{"role": "user", "content": "hi"}]})
            outcome = "success"
        except RouterError as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_requests_total") == REQUESTS
    assert scrape.get("llm_router_requests_total", route=UNKNOWN_ROUTE) == REQUESTS // 2
    assert scrape.get("llm_router_requests_total", route="free-*") == REQUESTS // 2
    assert len(outcomes) > 1 and scrape.get("llm_router_retries_total") > 0  # failures happened too

    label_sets = {(sample, tuple((k, v) for k, v in items if k != "le")) for sample, items in scrape.samples}
    label_values = {v for _, items in label_sets for _, v in items}
    assert not label_values & names
    assert scrape.label_values("llm_router_requests_total", "route") == {"free-*", UNKNOWN_ROUTE}
    assert scrape.label_values("llm_router_breaker_state", "target") <= {"a/{model}", "b/{model}"}
    series = {(sample.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum").removesuffix("_total")
               .removesuffix("_created"), items) for sample, items in label_sets}
    assert len(series) < 50, sorted(series)
