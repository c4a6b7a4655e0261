"""OpenTelemetry traces (router/observe/tracing.py) with the SDK's in-memory exporter: one span per
request and per attempt, GenAI attributes, the reason for a retry or failover, and the client's
`traceparent` carried to the providers over real HTTP.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping

import aiohttp
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from router import Router, UpstreamError
from router.observe.tracing import Tracing, from_environment
from router.policy.loader import parse_policy
from tests.conftest import FakeProviderFactory
from tests.support.daemon import start_in_process
from tests.support.memory import ScriptedTransport, completion_reply, error_reply, sse_body, stream_reply
from tests.support.policies import make_policy, provider_entry

POLICY = parse_policy("""
providers:
  a: {base_url: "http://127.0.0.1:9/v1"}
  b: {base_url: "http://127.0.0.1:9/v1"}
routes:
  chat:
    retry: {max_attempts: 3, max_attempts_per_target: 1, base_interval_s: 0.01, max_interval_s: 0.01}
    targets: [{provider: a, model: model-a, priority: 0}, {provider: b, model: model-b, priority: 1}]
""")
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "a private prompt"}]}
CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_PARENT = f"00-{CLIENT_TRACE}-00f067aa0ba902b7-01"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    memory = InMemorySpanExporter()
    yield memory
    memory.clear()


def tracing(exporter: InMemorySpanExporter) -> Tracing:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider)


async def upstream_headers(fake_provider: FakeProviderFactory, traces: Tracing | None) -> Mapping[str, str]:
    """One request with the client's `traceparent` through the daemon: the headers the provider got."""
    a = await fake_provider("a")
    policy = make_policy({"a": provider_entry(a)}, {"chat": {"targets": [{"provider": "a", "model": "m"}]}})
    daemon = await start_in_process(policy, tracing=traces)
    try:
        async with aiohttp.ClientSession() as session, \
                session.post(daemon.chat_url, json=CHAT, headers={"traceparent": CLIENT_PARENT}) as response:
            assert response.status == 200
    finally:
        await daemon.stop()
    return a.hits[0].headers_ci


def by_kind(spans: tuple[ReadableSpan, ...], kind: SpanKind) -> list[ReadableSpan]:
    return sorted((s for s in spans if s.kind is kind), key=lambda s: s.start_time or 0)


async def test_a_failed_over_request_is_one_server_span_with_one_client_span_per_attempt(
        exporter: InMemorySpanExporter) -> None:
    transport = ScriptedTransport(a=[error_reply(503)], b=[completion_reply("model-b")])
    async with Router(POLICY, transport=transport, tracing=tracing(exporter), rng=random.Random(1)) as router:
        result = await router.chat(CHAT)
    assert result.provider == "b"
    spans = exporter.get_finished_spans()
    (request,) = by_kind(spans, SpanKind.SERVER)
    first, second = by_kind(spans, SpanKind.CLIENT)
    assert request.attributes is not None and first.attributes is not None and second.attributes is not None
    assert request.attributes["gen_ai.operation.name"] == "chat"
    assert request.attributes["gen_ai.request.model"] == "chat"
    assert request.attributes["llm_router.route"] == "chat"
    assert request.attributes["llm_router.attempts"] == 2
    assert request.attributes["gen_ai.provider.name"] == "b"
    assert request.attributes["gen_ai.usage.input_tokens"] == 5
    assert request.attributes["gen_ai.usage.output_tokens"] == 1
    assert request.status.status_code is StatusCode.UNSET
    for attempt in (first, second):
        assert attempt.parent is not None and attempt.parent.span_id == request.context.span_id
        assert attempt.context.trace_id == request.context.trace_id
    assert first.attributes["gen_ai.provider.name"] == "a" and first.attributes["gen_ai.request.model"] == "model-a"
    assert first.attributes["llm_router.attempt.kind"] == "first"
    assert first.attributes["error.type"] == "server_error" and first.status.status_code is StatusCode.ERROR
    assert first.attributes["http.response.status_code"] == 503
    assert second.attributes["llm_router.attempt.kind"] == "failover"
    assert second.attributes["llm_router.attempt.previous_outcome"] == "server_error"
    assert second.attributes["gen_ai.response.model"] == "model-b"
    assert "error.type" not in second.attributes
    # Each attempt sent its own span's traceparent upstream.
    sent = [o.traceparent for o in transport.sent]
    assert sent == [f"00-{s.context.trace_id:032x}-{s.context.span_id:016x}-{int(s.context.trace_flags):02x}"
                    for s in (first, second)]
    text = repr([dict(s.attributes or {}) for s in spans])
    assert "a private prompt" not in text


async def test_a_failed_request_and_a_stream_are_traced_with_their_outcome(exporter: InMemorySpanExporter) -> None:
    transport = ScriptedTransport(a=[error_reply(503)], b=[error_reply(503)])
    async with Router(POLICY, transport=transport, tracing=tracing(exporter)) as router:
        with pytest.raises(UpstreamError):
            await router.chat(CHAT)
    (request,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes is not None and request.attributes["error.type"] == "server_error"
    exporter.clear()
    transport = ScriptedTransport(a=[stream_reply(sse_body(["hel", "lo"], usage={"prompt_tokens": 3,
                                                                                "completion_tokens": 2}))])
    router = Router(POLICY, transport=transport, tracing=tracing(exporter))
    async with router, router.stream({**CHAT, "stream": True}) as stream:
        assert [e async for e in stream][-1].data == "[DONE]"
    (request,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    assert request.attributes is not None and request.attributes["llm_router.stream"] is True
    assert request.attributes["llm_router.outcome"] == "success"
    assert request.attributes["gen_ai.usage.output_tokens"] == 2


async def test_the_clients_traceparent_reaches_the_provider_through_the_daemon(
        exporter: InMemorySpanExporter, fake_provider: FakeProviderFactory) -> None:
    upstream = (await upstream_headers(fake_provider, tracing(exporter)))["traceparent"]
    (request,) = by_kind(exporter.get_finished_spans(), SpanKind.SERVER)
    (attempt,) = by_kind(exporter.get_finished_spans(), SpanKind.CLIENT)
    assert f"{request.context.trace_id:032x}" == CLIENT_TRACE  # the client's trace, continued
    assert request.parent is not None and f"{request.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert upstream == f"00-{CLIENT_TRACE}-{attempt.context.span_id:016x}-{int(attempt.context.trace_flags):02x}"


async def test_without_tracing_nothing_is_sent_upstream_but_what_was_before(fake_provider: FakeProviderFactory) -> None:
    assert "traceparent" not in await upstream_headers(fake_provider, None)  # a client's header is never forwarded


def test_the_daemon_turns_tracing_on_from_the_standard_variable() -> None:
    assert from_environment({}) is None
    assert from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert isinstance(from_environment({"OTEL_TRACES_EXPORTER": "console"}), Tracing)
    assert isinstance(from_environment({"OTEL_TRACES_EXPORTER": "otlp"}), Tracing)
    with pytest.raises(ValueError, match="otlp, console or none"):
        from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
