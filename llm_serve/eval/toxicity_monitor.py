"""Online toxicity: a sample of answers (any route, streamed or not) scored off the request path.

The same shape as the groundedness monitor (eval/groundedness.py): sampled before the answer is
made (so a stream keeps its text), scored in a background task with a bound on pending work, and
reported three ways: a histogram of scores and a counter of verdicts per model, a gauge of the toxic
share over a window of recent answers, and an event on a span in the request's trace. This watches;
a guardrail (router/guardrails.py) is what acts on a request.
"""

from __future__ import annotations

import asyncio
import logging

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from llm_serve.eval.sampled_monitor import SampledMonitor
from llm_serve.safety.toxicity import toxicity
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.monitor")

TOXICITY_EVENT = "llm_serve.toxicity"


class ToxicityMonitor(SampledMonitor):
    """Samples answers and scores their toxicity in background tasks (eval/sampled_monitor.py)."""

    def submit(self, answer: str | None, *, model: str, request_id: str, parent: trace.SpanContext | None) -> bool:
        if not answer or not answer.strip():
            return False
        return self.schedule(self._score(answer, model, request_id, parent))

    async def _score(self, answer: str, model: str, request_id: str, parent: trace.SpanContext | None) -> None:
        try:
            score = await asyncio.to_thread(toxicity, answer)
        except Exception:
            logger.exception("toxicity scoring failed for %s", request_id)
            return
        self.record(score, model=model, request_id=request_id, parent=parent)

    def record(self, score: float, *, model: str, request_id: str, parent: trace.SpanContext | None = None) -> None:
        toxic = score >= self.config.threshold
        rate = self.verdict(toxic)
        self.metrics.toxicity.observe(score, {"model": model})
        self.metrics.toxicity_scored.inc(1, {"verdict": "toxic" if toxic else "clean"})
        self.metrics.toxic_rate.set(rate)
        if tracing.enabled() and parent is not None and parent.is_valid:
            span = tracing.tracer().start_span(
                "toxicity",
                context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                kind=SpanKind.INTERNAL,
                links=[Link(parent)],
                attributes={"gen_ai.request.model": model},
            )
            span.add_event(
                TOXICITY_EVENT,
                {
                    "llm_serve.toxicity.score": round(score, 4),
                    "llm_serve.toxicity.toxic": toxic,
                    "llm_serve.toxicity.toxic_rate": round(rate, 4),
                    "llm_serve.request_id": request_id,
                },
            )
            span.end()
        if toxic:
            logger.warning(
                "request %s: answer toxicity %.2f at or above %.2f", request_id, score, self.config.threshold
            )
