"""Online toxicity: a sample of answers (any route, streamed or not) scored off the request path.

The same shape as the groundedness monitor (eval/groundedness.py): sampled before the answer is
made (so a stream keeps its text), scored in a background task with a bound on pending work, and
reported three ways: a histogram of scores and a counter of verdicts per model, a gauge of the toxic
share over a window of recent answers, and an event on a span in the request's trace. This watches;
a guardrail (router/guardrails.py) is what acts on a request.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from llm_serve.config import ToxicityMonitorConfig
from llm_serve.safety.toxicity import toxicity
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.monitor")

TOXICITY_EVENT = "llm_serve.toxicity"


class ToxicityMonitor:
    def __init__(self, config: ToxicityMonitorConfig, metrics: Any, rng: random.Random | None = None) -> None:
        self.config = config
        self.metrics = metrics
        self.rng = rng or random.Random()
        self.recent: collections.deque[bool] = collections.deque(maxlen=config.window)
        self.pending: set[asyncio.Task[None]] = set()
        self.skipped = 0
        self.scored = 0

    def sample(self) -> bool:
        return self.config.enabled and self.config.sample_rate > 0 and self.rng.random() < self.config.sample_rate

    def submit(self, answer: str | None, *, model: str, request_id: str, parent: trace.SpanContext | None) -> bool:
        if not answer or not answer.strip():
            return False
        if len(self.pending) >= self.config.max_pending:
            self.skipped += 1
            return False
        task = asyncio.get_running_loop().create_task(self._score(answer, model, request_id, parent))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)
        return True

    async def _score(self, answer: str, model: str, request_id: str, parent: trace.SpanContext | None) -> None:
        try:
            score = await asyncio.to_thread(toxicity, answer)
        except Exception:
            logger.exception("toxicity scoring failed for %s", request_id)
            return
        self.record(score, model=model, request_id=request_id, parent=parent)

    def record(self, score: float, *, model: str, request_id: str, parent: trace.SpanContext | None = None) -> None:
        toxic = score >= self.config.threshold
        self.scored += 1
        self.recent.append(toxic)
        rate = sum(self.recent) / len(self.recent)
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
