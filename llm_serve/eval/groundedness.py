"""Online groundedness: is a RAG answer supported by the context it was given?

Scored off the request path on a sample of answers, so it must be cheap and need no judge model: a
sentence of the answer counts as supported when most of its content words (stemmed, filler dropped,
numbers kept: the normalisation of llm_serve/textnorm.py, which the semantic cache's lexical check
uses too) and every one of its numbers occur in the retrieved context; the answer's groundedness is
the share of its sentences that are supported. An answer that invents a number, a part name or a
step shows up as unsupported sentences. This is the non-LLM proxy of ragas' faithfulness (which
asks a judge to verify each statement); `llm-serve eval` with a judge gives the LLM-judged figure
offline. The estimate is exported as a metric (the hallucination rate over a window of recent
scored answers) and as an event on a span in the request's trace.
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.trace import Link, SpanKind

from llm_serve.eval.sampled_monitor import SampledMonitor
from llm_serve.telemetry import tracing
from llm_serve.textnorm import content_stems

logger = logging.getLogger("llm_serve.monitor")

_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")
GROUNDEDNESS_EVENT = "llm_serve.groundedness"


@dataclass(frozen=True)
class Groundedness:
    score: float  # share of the answer's sentences supported by the context (1.0 when nothing to check)
    sentences: int  # sentences with content words
    supported: int
    unsupported: tuple[str, ...]  # the sentences that were not supported (for logs and span events)


def score_groundedness(answer: str, contexts: list[str], support_threshold: float = 0.6) -> Groundedness:
    """Groundedness of `answer` against `contexts` (see the module docstring for the rule)."""
    vocabulary = {w for text in contexts for w in content_stems(text)}
    checked = supported = 0
    unsupported: list[str] = []
    for sentence in (s.strip() for s in _SENTENCE.split(answer or "")):
        words = set(content_stems(sentence))
        if not words:
            continue
        checked += 1
        # Numbers must all be in the context: an invented price, code or duration is the costly kind.
        numbers_ok = all(w in vocabulary for w in words if any(ch.isdigit() for ch in w))
        if numbers_ok and len(words & vocabulary) / len(words) >= support_threshold:
            supported += 1
        else:
            unsupported.append(sentence)
    score = supported / checked if checked else 1.0
    return Groundedness(score, checked, supported, tuple(unsupported))


class GroundednessMonitor(SampledMonitor):
    """Samples RAG answers and scores them in background tasks (eval/sampled_monitor.py)."""

    def submit(
        self,
        answer: str | None,
        contexts: list[str],
        *,
        model: str,
        collection: str,
        request_id: str,
        parent: trace.SpanContext | None = None,
    ) -> bool:
        """Score a sampled answer in the background; returns whether it was scheduled."""
        if not answer or not contexts:
            return False
        return self.schedule(self._score(answer, contexts, model, collection, request_id, parent))

    async def _score(
        self,
        answer: str,
        contexts: list[str],
        model: str,
        collection: str,
        request_id: str,
        parent: trace.SpanContext | None,
    ) -> None:
        try:
            result = await asyncio.to_thread(score_groundedness, answer, contexts, self.config.support_threshold)
        except Exception:
            logger.exception("groundedness scoring failed for %s", request_id)
            return
        self.record(result, model=model, collection=collection, request_id=request_id, parent=parent)

    def record(
        self,
        result: Groundedness,
        *,
        model: str,
        collection: str,
        request_id: str,
        parent: trace.SpanContext | None = None,
    ) -> None:
        hallucinated = result.score < self.config.threshold
        rate = self.verdict(hallucinated)
        self.metrics.groundedness.observe(result.score, {"model": model, "collection": collection})
        self.metrics.scored.inc(1, {"verdict": "hallucinated" if hallucinated else "grounded"})
        self.metrics.hallucination_rate.set(rate)
        attributes = {
            "llm_serve.groundedness.score": round(result.score, 4),
            "llm_serve.groundedness.sentences": result.sentences,
            "llm_serve.groundedness.supported": result.supported,
            "llm_serve.groundedness.hallucinated": hallucinated,
            "llm_serve.groundedness.hallucination_rate": round(rate, 4),
            "llm_serve.request_id": request_id,
        }
        if tracing.enabled() and parent is not None and parent.is_valid:
            # The request's spans have ended by now: the verdict goes on a child span of its own, in the
            # same trace, carrying the event (and a link back, for backends that show links).
            span = tracing.tracer().start_span(
                f"groundedness {collection}",
                context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                kind=SpanKind.INTERNAL,
                links=[Link(parent)],
                attributes={"gen_ai.request.model": model, "gen_ai.data_source.id": collection},
            )
            span.add_event(GROUNDEDNESS_EVENT, attributes)
            span.end()
        if hallucinated:
            logger.warning(
                "request %s: answer groundedness %.2f below %.2f (%d of %d sentences unsupported)",
                request_id,
                result.score,
                self.config.threshold,
                result.sentences - result.supported,
                result.sentences,
            )
