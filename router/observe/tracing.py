"""OpenTelemetry traces (the `otel` extra): one span per request, one per upstream attempt.

Off unless a `Tracing` is given to the `Router` (the daemon makes one when `OTEL_TRACES_EXPORTER` is
set). Off, the request path only checks `record.span is None`: nothing is imported, allocated or
timed (bench/README.md measures it).

Spans follow the GenAI semantic conventions where they fit (`gen_ai.operation.name`,
`gen_ai.request.model`, `gen_ai.response.model`, `gen_ai.provider.name`,
`gen_ai.usage.input_tokens` / `output_tokens`, `error.type`), plus the router's own
`llm_router.*` attributes: the route, the outcome, why an attempt was made (first, retry, failover,
hedge) and the previous attempt's verdict. A client's `traceparent` makes the request span its
child; every attempt sends its own span's `traceparent` to the provider, so a provider that traces
joins the same trace. Nothing a client sent is forwarded otherwise, and no prompt, key or header
value ever becomes an attribute.
"""

from __future__ import annotations

from typing import Any

from router._version import __version__

_INSTALL = "OpenTelemetry tracing needs the `otel` extra: pip install 'llm-router[otel]'"


class Tracing:
    """Makes the spans; `tracer_provider` defaults to OpenTelemetry's global one."""

    def __init__(self, tracer_provider: Any = None) -> None:
        try:
            from opentelemetry import trace
            from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
        except ImportError as exc:
            raise ImportError(_INSTALL) from exc
        self._trace = trace
        self._provider = tracer_provider
        self._tracer = trace.get_tracer("llm-router", __version__, tracer_provider=tracer_provider)
        self._propagator = TraceContextTextMapPropagator()

    def shutdown(self) -> None:
        """Flush and stop the tracer provider this was given (the daemon's, at exit)."""
        shutdown = getattr(self._provider, "shutdown", None)
        if shutdown is not None:
            shutdown()

    def request(self, *, route: str, model: str, stream: bool, request_id: str,
                traceparent: str | None) -> RequestSpan:
        parent = self._propagator.extract({"traceparent": traceparent}) if traceparent else None
        span = self._tracer.start_span(
            f"chat {route}", context=parent, kind=self._trace.SpanKind.SERVER,
            attributes={"gen_ai.operation.name": "chat", "gen_ai.request.model": model, "llm_router.route": route,
                        "llm_router.stream": stream, "llm_router.request_id": request_id})
        return RequestSpan(self, span)

    def _attempt(self, parent: Any, *, provider: str, model: str, kind: str, previous: str | None) -> AttemptSpan:
        attributes: dict[str, Any] = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": provider,
                                      "gen_ai.request.model": model, "llm_router.attempt.kind": kind}
        if previous is not None:
            attributes["llm_router.attempt.previous_outcome"] = previous
        span = self._tracer.start_span(f"chat {model}", context=self._trace.set_span_in_context(parent),
                                       kind=self._trace.SpanKind.CLIENT, attributes=attributes)
        carrier: dict[str, str] = {}
        self._propagator.inject(carrier, context=self._trace.set_span_in_context(span))
        return AttemptSpan(self, span, carrier.get("traceparent"))


class RequestSpan:
    __slots__ = ("_span", "_tracing")

    def __init__(self, tracing: Tracing, span: Any) -> None:
        self._tracing, self._span = tracing, span

    def attempt(self, *, provider: str, model: str, kind: str, previous: str | None) -> AttemptSpan:
        return self._tracing._attempt(self._span, provider=provider, model=model, kind=kind, previous=previous)

    def usage(self, prompt: int | None, completion: int | None) -> None:
        _usage(self._span, prompt, completion)

    def finish(self, outcome: str, *, provider: str | None, attempts: int) -> None:
        span = self._span
        span.set_attribute("llm_router.outcome", outcome)
        span.set_attribute("llm_router.attempts", attempts)
        if provider is not None:
            span.set_attribute("gen_ai.provider.name", provider)
        if outcome != "success":
            span.set_attribute("error.type", outcome)
            span.set_status(self._tracing._trace.Status(self._tracing._trace.StatusCode.ERROR, outcome))
        span.end()


class AttemptSpan:
    __slots__ = ("_span", "_tracing", "traceparent")

    def __init__(self, tracing: Tracing, span: Any, traceparent: str | None) -> None:
        self._tracing, self._span, self.traceparent = tracing, span, traceparent

    def hedge(self) -> None:
        self._span.set_attribute("llm_router.attempt.kind", "hedge")

    def usage(self, prompt: int | None, completion: int | None, model: str) -> None:
        _usage(self._span, prompt, completion)
        self._span.set_attribute("gen_ai.response.model", model)

    def finish(self, outcome: str, *, status: int | None, ttfb_s: float | None) -> None:
        span = self._span
        span.set_attribute("llm_router.outcome", outcome)
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if ttfb_s is not None:
            span.set_attribute("llm_router.ttfb_s", round(ttfb_s, 6))
        if outcome not in ("ok", "cancelled"):
            span.set_attribute("error.type", outcome)
            span.set_status(self._tracing._trace.Status(self._tracing._trace.StatusCode.ERROR, outcome))
        span.end()


def _usage(span: Any, prompt: int | None, completion: int | None) -> None:
    if prompt is not None:
        span.set_attribute("gen_ai.usage.input_tokens", prompt)
    if completion is not None:
        span.set_attribute("gen_ai.usage.output_tokens", completion)


def from_environment(environ: dict[str, str] | Any) -> Tracing | None:
    """The daemon's tracing: on when `OTEL_TRACES_EXPORTER` is `otlp` or `console` (OpenTelemetry's own
    variable), off when it is unset or `none`. The OTLP exporter reads its endpoint and headers from the
    standard `OTEL_EXPORTER_OTLP_*` variables."""
    choice = (environ.get("OTEL_TRACES_EXPORTER") or "none").strip().lower()
    if choice == "none":
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
    except ImportError as exc:
        raise ImportError(_INSTALL) from exc
    if choice == "console":
        exporter: Any = ConsoleSpanExporter()
    elif choice == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise ImportError(_INSTALL) from exc
        exporter = OTLPSpanExporter()
    else:
        raise ValueError(f"OTEL_TRACES_EXPORTER={choice!r}: the router supports otlp, console or none")
    provider = TracerProvider(resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME")
                                                        or "llm-router"}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return Tracing(provider)
