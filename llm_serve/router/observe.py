"""What the router tells the outside about each request: its GenAI span, its metrics, the gauges of
requests in flight, and the groundedness monitor's sample of RAG answers.

One `Observer` per router replica. A request's span opens when its context exists (`begin`) and
closes at settlement (`end`), carrying what the request cost and how it ended; the metrics are
recorded from the same ledger row at the same moment, so traces, metrics and the ledger agree.
"""

from __future__ import annotations

import contextlib
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from llm_serve.eval.groundedness import GroundednessMonitor
from llm_serve.eval.toxicity_monitor import ToxicityMonitor
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.telemetry import genai, tracing
from llm_serve.telemetry.metrics import ServingMetrics


class Observer:
    def __init__(
        self, metrics: ServingMetrics, monitor: GroundednessMonitor, toxicity: ToxicityMonitor | None = None
    ) -> None:
        self.metrics = metrics
        self.monitor = monitor
        self.toxicity = toxicity
        self.ongoing: dict[str, int] = {}  # requests in this replica now, by route
        self.waiting_first = 0  # requests waiting for an engine's first output

    def begin(self, ctx: RequestContext, attributes: dict[str, Any]) -> None:
        """Open the request's GenAI span (a child of the ingress span) and count it as ongoing."""
        ctx.span = tracing.tracer().start_span(
            genai.span_name(ctx.route, ctx.row.model if ctx.model_known else None),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        ctx.trace_id = tracing.trace_id_of(ctx.span)
        self._gauge_ongoing(ctx.route, +1)

    def _gauge_ongoing(self, route: str, delta: int) -> None:
        self.ongoing[route] = self.ongoing.get(route, 0) + delta
        self.metrics.ongoing.set(self.ongoing[route], {"route": route})

    def check_capacity(self, limit: int) -> None:
        """Refuse a new request at once when this replica already holds `limit` (503 with Retry-After)."""
        if sum(self.ongoing.values()) >= limit:
            raise OpenAIError(
                503,
                f"this router replica is at its limit of {limit} requests in flight; try again shortly",
                code="overloaded",
                headers={"retry-after": "1"},
            )

    def waiting(self, delta: int) -> None:
        """A request starts (+1) or stops (-1) waiting for an engine's first output."""
        self.waiting_first += delta
        self.metrics.queued.set(self.waiting_first)

    def end(self, ctx: RequestContext) -> None:
        """Close the request's span with what it cost and how it ended; record its metrics. Once."""
        span, ctx.span = ctx.span, None
        if span is None:
            return
        row = ctx.row
        self._gauge_ongoing(ctx.route, -1)
        self.metrics.record(row, model_known=ctx.model_known, error_code=ctx.error_code, ttft_s=ctx.ttft_s)
        if not span.is_recording():
            span.end()
            return
        served = ctx.served if ctx.model_known else ""
        span.update_name(genai.span_name(ctx.route, served or None))
        attributes: dict[str, Any] = {
            genai.INPUT_TOKENS: row.prompt_tokens,
            "llm_serve.request_id": row.request_id,
            "llm_serve.key": row.key_name,
            "llm_serve.cost_usd": row.cost_usd,
            "llm_serve.status": row.status,
        }
        if served:
            attributes[genai.RESPONSE_MODEL] = served
        if ctx.route != "embeddings":
            attributes[genai.OUTPUT_TOKENS] = row.completion_tokens
            attributes["llm_serve.cache"] = row.cache
        if row.cached_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = row.cached_tokens
        if row.prompt:
            attributes["llm_serve.prompt_version"] = row.prompt
        if row.adapter:
            attributes["llm_serve.adapter"] = row.adapter
        if ctx.ttft_s is not None:
            attributes["llm_serve.ttft_s"] = round(ctx.ttft_s, 6)
        if row.status >= 400:
            attributes[genai.ERROR_TYPE] = ctx.error_code or str(row.status)
            span.set_status(Status(StatusCode.ERROR, (row.error or "")[:200]))
        span.set_attributes(attributes)
        span.end()

    def first_output(self, ctx: RequestContext) -> None:
        """A stream's first engine output: its time to first token, and the span's event."""
        ctx.ttft_s = ctx.elapsed_ms / 1000
        if ctx.span is not None:
            ctx.span.add_event(genai.FIRST_TOKEN_EVENT)

    def sample_toxicity(self, ctx: RequestContext) -> bool:
        """Decide (once per request) whether the toxicity monitor scores this answer."""
        if ctx.watch_toxicity is None:
            ctx.watch_toxicity = self.toxicity is not None and self.toxicity.sample()
        return ctx.watch_toxicity

    def response(self, ctx: RequestContext, payload: dict[str, Any] | None) -> None:
        """Facts of a complete response for the span (id, finish reasons; content only when opted in)
        and the groundedness and toxicity monitors' samples."""
        span = ctx.span
        if span is not None and span.is_recording() and payload:
            span.set_attributes(genai.response_attributes({k: v for k, v in payload.items() if k != "usage"}))
            if tracing.capture_content():
                if ctx.body is not None:
                    span.set_attribute(genai.INPUT_MESSAGES, genai.input_messages(ctx.route, ctx.body) or "")
                span.set_attribute(genai.OUTPUT_MESSAGES, genai.output_messages(payload) or "")
        if payload and self.toxicity is not None and self.sample_toxicity(ctx):
            first = (payload.get("choices") or [{}])[0]
            text = (first.get("message") or {}).get("content") if "message" in first else first.get("text")
            self.toxicity.submit(
                text if isinstance(text, str) else None,
                model=ctx.row.model if ctx.model_known else "unknown",
                request_id=ctx.row.request_id,
                parent=span.get_span_context() if span is not None else None,
            )
        if ctx.rag_contexts is not None and payload:
            choices = payload.get("choices") or [{}]
            answer = (choices[0].get("message") or {}).get("content")
            self.monitor.submit(
                answer,
                ctx.rag_contexts,
                model=ctx.row.model,
                collection=ctx.rag.collection if ctx.rag is not None else "",
                request_id=ctx.row.request_id,
                parent=span.get_span_context() if span is not None else None,
            )


def current(span: Span | None) -> Any:
    """Make `span` the current one for a block (children nest under it) without ending it on exit."""
    if span is None:
        return contextlib.nullcontext()
    # A 4xx is an answer, not a crash: the request's status (set at settlement) says how it ended.
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)
