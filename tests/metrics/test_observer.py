"""PrometheusObserver on its own, and what the engine reports to an observer.

The first half calls the hooks directly and reads the registry back through the
Prometheus text format; the second drives `Router` with an in-memory transport and
checks the reporting contract of `router/observe/observer.py`: each started request finishes
exactly once (streams and cancellations included), each attempt is reported once,
stream gaps and malformed events name the provider.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import urllib.request

import pytest
from prometheus_client import CollectorRegistry

from router import InvalidRequest, RateLimited, Router, UnknownRoute, UpstreamError
from router._version import __version__
from router.observe.observer import UNKNOWN_ROUTE
from router.observe.prometheus import DURATION_BUCKETS, FINE_BUCKETS, PrometheusObserver, start_exporter
from router.policy.loader import parse_policy
from tests.metrics.helpers import CountingObserver, Scrape, error, policy, route
from tests.support.memory import HangingTransport, MemoryTransport, sse_body, stream_reply

ALL_METRICS = {
    "llm_router_requests": "counter",
    "llm_router_request_duration_seconds": "histogram",
    "llm_router_requests_in_flight": "gauge",
    "llm_router_upstream_attempts": "counter",
    "llm_router_upstream_attempt_duration_seconds": "histogram",
    "llm_router_upstream_ttfb_seconds": "histogram",
    "llm_router_stream_chunk_gap_seconds": "histogram",
    "llm_router_retries": "counter",
    "llm_router_failovers": "counter",
    "llm_router_retry_budget_exhausted": "counter",
    "llm_router_client_rate_limited": "counter",
    "llm_router_provider_throttled": "counter",
    "llm_router_breaker_state": "gauge",
    "llm_router_breaker_ejections": "counter",
    "llm_router_malformed_events": "counter",
    "llm_router_upstream_resends": "counter",
    "llm_router_tokens": "counter",
    "llm_router_state_backend_errors": "counter",
    "llm_router_build_info": "gauge",
    "llm_router_config_reloads": "counter",
    "llm_router_limit_header_throttles": "counter",
    "llm_router_target_latency_seconds": "gauge",
    "llm_router_health_probes": "counter",
    "llm_router_hedges": "counter",
}
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT = {"model": "chat", "messages": MESSAGES}
STREAM = {**CHAT, "stream": True}


# -- the observer on its own ---------------------------------------------------------------------

def test_every_metric_is_declared_with_its_type_and_nothing_else() -> None:
    observer = PrometheusObserver()
    assert Scrape.of(observer.registry).types == ALL_METRICS


def test_build_info_carries_the_version() -> None:
    scrape = Scrape.of(PrometheusObserver().registry)
    assert scrape.series("llm_router_build_info") == {(("version", __version__),): 1.0}


def test_request_hooks_count_time_and_track_in_flight() -> None:
    observer = PrometheusObserver()
    observer.request_started("chat", "web")
    observer.request_started("chat", "web")
    assert Scrape.of(observer.registry).get("llm_router_requests_in_flight", route="chat") == 2
    observer.request_finished("chat", "web", "success", 0.2)
    observer.request_finished("chat", "web", "server_error", 7.0)
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_requests_in_flight", route="chat") == 0
    assert scrape.series("llm_router_requests_total") == {
        (("client", "web"), ("outcome", "success"), ("route", "chat")): 1.0,
        (("client", "web"), ("outcome", "server_error"), ("route", "chat")): 1.0}
    assert scrape.get("llm_router_request_duration_seconds_count", route="chat", outcome="success") == 1
    assert scrape.get("llm_router_request_duration_seconds_sum", route="chat") == pytest.approx(7.2)
    assert scrape.get("llm_router_request_duration_seconds_bucket", route="chat", outcome="server_error",
                      le="5.0") == 0
    assert scrape.get("llm_router_request_duration_seconds_bucket", route="chat", outcome="server_error",
                      le="10.0") == 1


def test_histogram_buckets_span_milliseconds_to_minutes() -> None:
    assert DURATION_BUCKETS[0] == 0.005 and DURATION_BUCKETS[-1] == 300
    assert FINE_BUCKETS[0] == 0.001 and FINE_BUCKETS[-1] == 30
    observer = PrometheusObserver()
    observer.attempt_finished("chat", "aimo", "ok", 0.5, 0.003)
    scrape = Scrape.of(observer.registry)
    bounds = {dict(items)["le"] for items in scrape.series("llm_router_upstream_ttfb_seconds_bucket")}
    assert {"0.001", "0.0025", "30.0", "+Inf"} <= bounds
    bounds = {dict(items)["le"] for items in scrape.series("llm_router_upstream_attempt_duration_seconds_bucket")}
    assert {"0.005", "300.0", "+Inf"} <= bounds


def test_attempt_hook_counts_by_route_provider_outcome_and_times_by_provider() -> None:
    observer = PrometheusObserver()
    observer.attempt_finished("chat", "aimo", "ok", 0.5, 0.05)
    observer.attempt_finished("other", "aimo", "ok", 0.5, 0.05)
    observer.attempt_finished("chat", "aimo", "connect_error", 0.01, None)
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_upstream_attempts_total", route="chat", provider="aimo", outcome="ok") == 1
    assert scrape.get("llm_router_upstream_attempts_total", provider="aimo") == 3
    assert scrape.series("llm_router_upstream_attempt_duration_seconds_count") == {
        (("outcome", "ok"), ("provider", "aimo")): 2.0, (("outcome", "connect_error"), ("provider", "aimo")): 1.0}
    assert scrape.get("llm_router_upstream_ttfb_seconds_count", provider="aimo") == 2  # no headers: no TTFB


def test_decision_hooks() -> None:
    observer = PrometheusObserver()
    observer.retried("chat", "server_error")
    observer.retried("chat", "server_error")
    observer.failed_over("chat", "aimo", "asi1")
    observer.retry_budget_exhausted("chat")
    observer.client_rate_limited("web", "requests")
    observer.client_rate_limited("web", "tokens")
    observer.provider_throttled("aimo")
    observer.malformed_event("asi1")
    observer.upstream_resent("aimo")
    observer.stream_chunk_gap("asi1", 0.02)
    observer.tokens_used("chat", "aimo", 12, 30)
    observer.tokens_used("chat", "aimo", 3, 0)
    observer.state_backend_error("redis", "take")
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_retries_total", route="chat", reason="server_error") == 2
    assert scrape.get("llm_router_failovers_total", route="chat", from_provider="aimo", to_provider="asi1") == 1
    assert scrape.get("llm_router_retry_budget_exhausted_total", route="chat") == 1
    assert scrape.get("llm_router_client_rate_limited_total", client="web", kind="requests") == 1
    assert scrape.get("llm_router_client_rate_limited_total", client="web", kind="tokens") == 1
    assert scrape.get("llm_router_provider_throttled_total", provider="aimo") == 1
    assert scrape.get("llm_router_malformed_events_total", provider="asi1") == 1
    assert scrape.get("llm_router_upstream_resends_total", provider="aimo") == 1
    assert scrape.get("llm_router_stream_chunk_gap_seconds_count", provider="asi1") == 1
    assert scrape.get("llm_router_stream_chunk_gap_seconds_bucket", provider="asi1", le="0.025") == 1
    assert scrape.get("llm_router_tokens_total", route="chat", provider="aimo", kind="prompt") == 15
    assert scrape.get("llm_router_tokens_total", route="chat", provider="aimo", kind="completion") == 30
    assert scrape.get("llm_router_state_backend_errors_total", backend="redis", operation="take") == 1


def test_breaker_state_and_ejections() -> None:
    observer = PrometheusObserver()
    observer.breaker_changed("aimo", "aimo/deepseek", "open")
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_breaker_state", provider="aimo", target="aimo/deepseek") == 1
    assert scrape.get("llm_router_breaker_ejections_total", target="aimo/deepseek") == 1
    observer.breaker_changed("aimo", "aimo/deepseek", "closed")
    observer.breaker_changed("aimo", "aimo/deepseek", "open")
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_breaker_state", target="aimo/deepseek") == 1
    assert scrape.get("llm_router_breaker_ejections_total", target="aimo/deepseek") == 2
    observer.breaker_changed("aimo", "aimo/deepseek", "closed")
    assert Scrape.of(observer.registry).get("llm_router_breaker_state", target="aimo/deepseek") == 0


def test_config_reloads_by_result() -> None:
    observer = PrometheusObserver()
    observer.count_reload(True)
    observer.count_reload(False)
    observer.count_reload(False)
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_config_reloads_total", result="success") == 1
    assert scrape.get("llm_router_config_reloads_total", result="failure") == 2


def test_observers_share_nothing_and_a_registry_takes_one_observer() -> None:
    registry = CollectorRegistry()
    first = PrometheusObserver(registry)
    assert first.registry is registry
    second = PrometheusObserver()
    first.request_finished("chat", "-", "success", 0.1)
    assert Scrape.of(second.registry).get("llm_router_requests_total") == 0
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        PrometheusObserver(registry)


@pytest.mark.slow
def test_start_exporter_serves_the_registry_over_http() -> None:
    observer = PrometheusObserver()
    observer.request_finished("chat", "-", "success", 0.1)
    server, thread = start_exporter(0, observer.registry)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert Scrape.parse(text).get("llm_router_requests_total", route="chat") == 1


# -- what the router reports ---------------------------------------------------------------------

def make_router(transport: MemoryTransport, observer: object, **top: object) -> Router:
    routes = {"chat": route("a", "b"), "free-*": route("a")}
    return Router(policy(["a", "b"], routes, **top), transport=transport, observer=observer)  # type: ignore[arg-type]


async def test_chat_success_and_failure_report_one_finish_each() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: error(500), b=lambda o: error(503)), observer)
    with pytest.raises(UpstreamError):
        await router.chat(CHAT)
    router = make_router(MemoryTransport(), observer)
    await router.chat(CHAT)
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "server_error"), ("chat", "-", "success")]
    assert [a[2] for a in observer.attempts] == ["server_error", "server_error", "server_error", "ok"]


async def test_refusals_before_admission_are_counted_once_under_their_route_or_unknown() -> None:
    observer = CountingObserver()
    clients = [{"name": "web", "key_sha256": "0" * 64, "routes": ["free-*"],
                "limits": {"requests_per_second": 0.001, "burst": 1}}]
    router = make_router(MemoryTransport(), observer, clients=clients)
    with pytest.raises(UnknownRoute):
        await router.chat({"model": "no-such-model-8f3a", "messages": MESSAGES})
    with pytest.raises(InvalidRequest):
        await router.chat({"model": "chat"})  # no messages
    with pytest.raises(InvalidRequest):
        router.stream({"model": "chat"})
    with pytest.raises(InvalidRequest):
        await router.chat(CHAT, client="stranger")  # not a client of the policy: no label of its own
    with pytest.raises(InvalidRequest):
        await router.chat(CHAT, client="web")  # route not allowed
    await router.chat({"model": "free-x", "messages": MESSAGES}, client="web")
    with pytest.raises(RateLimited):
        await router.chat({"model": "free-y", "messages": MESSAGES}, client="web")
    with pytest.raises(RateLimited):
        await router.stream({"model": "free-y", "messages": MESSAGES}, client="web").start()
    observer.assert_paired()
    assert observer.finished == [
        (UNKNOWN_ROUTE, "-", "model_not_found"),
        (UNKNOWN_ROUTE, "-", "invalid_request_error"),
        (UNKNOWN_ROUTE, "-", "invalid_request_error"),
        ("chat", "-", "invalid_request_error"),
        ("chat", "web", "route_not_allowed"),
        ("free-*", "web", "success"),
        ("free-*", "web", "rate_limited"),
        ("free-*", "web", "rate_limited"),
    ]


async def test_a_request_cancelled_while_queued_for_its_client_limit_finishes_once() -> None:
    observer = CountingObserver()
    clients = [{"name": "web", "key_sha256": "0" * 64,
                "limits": {"requests_per_second": 0.1, "burst": 1, "queue_s": 30}}]
    router = make_router(MemoryTransport(), observer, clients=clients)
    await router.chat(CHAT, client="web")
    task = asyncio.create_task(router.chat(CHAT, client="web"))
    await asyncio.sleep(0.02)
    assert observer.started == [("chat", "web")] * 2 and len(observer.finished) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    observer.assert_paired()
    assert observer.finished[-1] == ("chat", "web", "cancelled")


async def test_a_chat_cancelled_mid_attempt_reports_the_attempt_and_the_request_as_cancelled() -> None:
    observer = CountingObserver()
    router = make_router(HangingTransport(), observer)
    task = asyncio.create_task(router.chat(CHAT))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


async def test_a_complete_stream_reports_one_attempt_one_finish_and_a_gap_per_later_event() -> None:
    observer = CountingObserver()
    body = sse_body(["He", "llo"], usage={"prompt_tokens": 4, "completion_tokens": 2})
    router = make_router(MemoryTransport(a=lambda o: stream_reply(body)), observer)
    async with router.stream(STREAM) as stream:
        events = [event async for event in stream]
    assert events[-1].is_done
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "success")]
    assert observer.attempts == [("chat", "a", "ok")]
    upstream_events = body.count(b"data: ")
    assert [p for p, _ in observer.gaps] == ["a"] * (upstream_events - 1)
    assert observer.tokens == [("chat", "a", 4, 2)]


async def test_a_stream_without_usage_reports_no_tokens() -> None:
    # Its reservations settle on an estimate, but an estimate is not a measurement.
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["Hi"]))), observer)
    async with router.stream(STREAM) as stream:
        async for _ in stream:
            pass
    assert observer.finished == [("chat", "-", "success")] and observer.tokens == []


async def test_a_malformed_first_event_is_counted_for_the_provider_not_the_route() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["Hi"], malformed_first=True))),
                         observer)
    async with router.stream(STREAM) as stream:
        async for _ in stream:
            pass
    assert observer.malformed == ["a"]


async def test_a_stream_closed_by_its_caller_mid_way_finishes_cancelled_once() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["a", "b", "c", "d"]))), observer)
    stream = router.stream(STREAM)
    async for _ in stream:
        break
    await stream.aclose()
    await stream.aclose()
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


async def test_a_started_stream_closed_without_iterating_finishes_cancelled_once() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["a"]))), observer)
    stream = router.stream(STREAM)
    await stream.start()
    await stream.aclose()
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


async def test_a_stream_whose_task_is_cancelled_while_waiting_upstream_finishes_cancelled_once() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["a", "b"]), hang_after=2)), observer)
    seen: list[object] = []

    async def consume() -> None:
        async with router.stream(STREAM) as stream:
            async for event in stream:
                seen.append(event)

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.01)
    assert len(seen) == 2  # then the provider goes quiet
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


async def test_a_stream_cancelled_before_its_first_event_reports_the_attempt_cancelled() -> None:
    observer = CountingObserver()
    router = make_router(HangingTransport(), observer)
    stream = router.stream(STREAM)
    task = asyncio.create_task(stream.start())
    await asyncio.sleep(0.01)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await stream.aclose()
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


async def test_router_with_a_prometheus_observer_leaves_nothing_in_flight() -> None:
    observer = PrometheusObserver()
    router = make_router(MemoryTransport(b=lambda o: stream_reply(sse_body(["x"]))), observer)
    await router.chat(CHAT)
    with pytest.raises(UnknownRoute):
        await router.chat({"model": "nope", "messages": MESSAGES})
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_requests_total") == 2
    assert scrape.get("llm_router_requests_total", route=UNKNOWN_ROUTE, outcome="model_not_found") == 1
    assert scrape.series("llm_router_requests_in_flight") == {(("route", "chat"),): 0.0,
                                                             (("route", UNKNOWN_ROUTE),): 0.0}
    assert router.observer is observer


async def test_a_started_stream_dropped_without_closing_still_finishes_cancelled_once() -> None:
    observer = CountingObserver()
    router = make_router(MemoryTransport(a=lambda o: stream_reply(sse_body(["a", "b"]))), observer)
    stream = router.stream(STREAM)
    await stream.start()
    del stream
    gc.collect()
    await asyncio.sleep(0)
    observer.assert_paired()
    assert observer.finished == [("chat", "-", "cancelled")]
    assert observer.attempts == [("chat", "a", "cancelled")]


def test_learning_hooks_and_the_latency_estimates_read_at_scrape_time() -> None:
    observer = PrometheusObserver()
    observer.limit_header_throttled("aimo")
    observer.health_probed("aimo", False)
    observer.health_probed("aimo", True)
    observer.hedged("chat", "won")
    observer.hedged("chat", "suppressed")
    estimates = [("aimo", "aimo/m", "stream", 0.25)]
    observer.watch_target_latencies(lambda: list(estimates))
    scrape = Scrape.of(observer.registry)
    assert scrape.get("llm_router_limit_header_throttles_total", provider="aimo") == 1
    assert scrape.get("llm_router_health_probes_total", provider="aimo", outcome="failed") == 1
    assert scrape.get("llm_router_health_probes_total", provider="aimo", outcome="ok") == 1
    assert scrape.series("llm_router_hedges_total") == {
        (("outcome", "suppressed"), ("route", "chat")): 1.0, (("outcome", "won"), ("route", "chat")): 1.0}
    assert scrape.get("llm_router_target_latency_seconds", provider="aimo", target="aimo/m", kind="stream") == 0.25
    estimates[0] = ("aimo", "aimo/m", "stream", 0.5)  # the router's current state, not a copy taken per request
    assert Scrape.of(observer.registry).get("llm_router_target_latency_seconds", target="aimo/m") == 0.5


async def test_a_router_exports_its_adaptive_targets_latency_estimates() -> None:
    observer = PrometheusObserver()
    policy = parse_policy("""
providers:
  a: {base_url: "http://127.0.0.1:9/v1"}
  b: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    strategy: adaptive
    targets: [{provider: a, model: m}, {provider: b, model: m}]
""")
    async with Router(policy, observer=observer, transport=MemoryTransport()) as router:
        for _ in range(20):
            await router.chat(CHAT)
    series = Scrape.of(observer.registry).series("llm_router_target_latency_seconds")
    assert {dict(labels)["target"] for labels in series} == {"a/m", "b/m"}
    assert {dict(labels)["kind"] for labels in series} == {"json"}
    assert all(value >= 0 for value in series.values())
