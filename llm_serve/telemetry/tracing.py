"""OpenTelemetry set-up shared by every process that traces: router, embedder and engine replicas,
training workers and the training driver.

Each process builds its own TracerProvider from the `telemetry.tracing` config section instead of
setting the global one: Ray Serve may install its own global provider (its built-in tracing), vLLM
may too, and a second `set_tracer_provider` is silently ignored. Keeping ours private means our spans
always go where our config says. When tracing is off, `tracer()` is the API's no-op tracer, so the
instrumented code pays one attribute lookup and no allocation of real spans.

Context crosses process boundaries as a W3C `traceparent` carrier (a dict of headers): in the
RawRequestInfo headers of an engine call, as an argument of embedder calls and in the training
loop's config. Nothing relies on Ray's own (experimental) task tracing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Span, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from llm_serve.config import TracingConfig
from llm_serve.telemetry.sampling import RateLimited

logger = logging.getLogger("llm_serve.telemetry")

INSTRUMENTATION_NAME = "llm_serve"
TRACE_ID_HEADER = "x-trace-id"
_PROPAGATOR = TraceContextTextMapPropagator()
_NOOP = trace.NoOpTracer()


class _State:
    """This process' tracing: one provider, set up once (replicas and workers call setup on start)."""

    lock = threading.Lock()
    provider: Any = None
    tracer: Tracer = _NOOP
    config: TracingConfig | None = None
    component: str = ""


def setup_tracing(config: TracingConfig | dict[str, Any] | None, component: str) -> bool:
    """Install this process' tracer from config (idempotent); returns whether tracing is on.

    `component` (router, engine, embedder, train-worker, ...) becomes `service.instance.id`-like
    resource attribute `llm_serve.component`, so one service's processes stay tellable apart.
    """
    if _State.provider is not None:  # the per-request path (engine replicas) stops here
        return True
    if config is None:
        return False
    cfg = config if isinstance(config, TracingConfig) else TracingConfig.model_validate(config)
    with _State.lock:
        if _State.provider is not None:
            return True
        if not cfg.enabled:
            return False
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

        resource = Resource.create(
            {"service.name": cfg.service_name, "llm_serve.component": component, "process.pid": os.getpid()}
        )
        sampler = ParentBased(
            TraceIdRatioBased(cfg.sampling_ratio), remote_parent_sampled=RateLimited(cfg.max_incoming_traces_per_s)
        )
        provider = TracerProvider(resource=resource, sampler=sampler)
        provider.add_span_processor(
            BatchSpanProcessor(
                _exporter(cfg),
                max_queue_size=cfg.max_queue_size,
                schedule_delay_millis=cfg.schedule_delay_ms,
                max_export_batch_size=min(cfg.max_export_batch_size, cfg.max_queue_size),
            )
        )
        _State.provider, _State.config, _State.component = provider, cfg, component
        _State.tracer = provider.get_tracer(INSTRUMENTATION_NAME)
        logger.info("tracing on (%s exporter, sampling %.2f) in %s", cfg.exporter, cfg.sampling_ratio, component)
        return True


def _exporter(cfg: TracingConfig) -> Any:
    if cfg.exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    if cfg.exporter == "memory":
        from llm_serve.telemetry.collector import CollectorExporter

        return CollectorExporter(cfg.memory_max_spans)
    endpoint = cfg.endpoint or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    headers = dict(cfg.headers) or None
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, headers=headers, insecure=_insecure(endpoint))
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    if endpoint and not endpoint.rstrip("/").endswith("/v1/traces"):
        endpoint = endpoint.rstrip("/") + "/v1/traces"
    return HttpExporter(endpoint=endpoint, headers=headers)


def _insecure(endpoint: str | None) -> bool:
    return not (endpoint or "").startswith("https://")


def tracer() -> Tracer:
    return _State.tracer


def enabled() -> bool:
    return _State.provider is not None


def capture_content() -> bool:
    return _State.config is not None and _State.config.capture_content


def flush(timeout_ms: int = 5000) -> None:
    """Export what is buffered (end of a training job, a test); a no-op when tracing is off."""
    if _State.provider is not None:
        _State.provider.force_flush(timeout_ms)


def shutdown() -> None:
    """Flush and drop this process' provider (tests set tracing up more than once per process)."""
    with _State.lock:
        if _State.provider is not None:
            _State.provider.shutdown()
        _State.provider, _State.config, _State.tracer = None, None, _NOOP


def carrier(span_or_context: Span | Context | None = None) -> dict[str, str]:
    """W3C trace headers for the current span (or the one given), to send across a process boundary."""
    if not enabled():
        return {}
    headers: dict[str, str] = {}
    ctx = trace.set_span_in_context(span_or_context) if isinstance(span_or_context, Span) else span_or_context
    _PROPAGATOR.inject(headers, context=ctx)
    return headers


def context_from(headers: Mapping[str, str] | None) -> Context | None:
    """The remote parent carried by `headers` (a `traceparent`), or None when there is none."""
    if not headers:
        return None
    lowered = {k.lower(): v for k, v in headers.items()}
    if "traceparent" not in lowered:
        return None
    ctx = _PROPAGATOR.extract(lowered)
    span = trace.get_current_span(ctx)
    return ctx if span.get_span_context().is_valid else None


def trace_id_of(span: Span | None = None) -> str | None:
    """Hex trace id of `span` (or the current one); None when nothing is being recorded."""
    span = span if span is not None else trace.get_current_span()
    sc = span.get_span_context()
    return format(sc.trace_id, "032x") if sc.is_valid else None
