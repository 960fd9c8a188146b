"""Scoring answers with ragas 0.4.3.

The answer metrics come from `ragas.metrics.collections` (the 0.4 API; the old `ragas.metrics`
names are deprecated aliases). The collections have no string-based context precision/recall, so
those two are ragas' non-LLM metrics from their defining modules, called per sample with
`single_turn_ascore`, which imports them without the deprecation shim. Every score is taken one row
at a time so that one bad row (a judge that answers prose instead of JSON) costs that row's score
(NaN, counted) instead of the run.
"""

from __future__ import annotations

import asyncio
import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

if TYPE_CHECKING:
    from llm_serve.eval.client import Answer
    from llm_serve.eval.dataset import EvalRow
    from llm_serve.eval.judge import JudgeMetrics

REFERENCE_METRICS = ("rouge_score", "bleu_score", "chrf_score", "exact_match")
STRING_METRIC = "string_present"
JSON_METRIC = "json_parse_success_rate"  # rows with `expect_json`: 1 when json.loads (and the schema) accept it
CONTEXT_METRICS = ("context_precision", "context_recall")
JUDGE_METRICS = ("faithfulness", "answer_relevancy")
# 1 when a RAG answer's groundedness (eval/groundedness.py, the online monitor's rule) is below threshold.
HALLUCINATION_METRIC = "hallucination_rate"
TOXICITY_METRIC = "toxicity"  # alt-profanity-check's probability (llm_serve/safety/toxicity.py)
# Computed from the answers themselves in report.summarize, not per row by the scorer.
OPERATIONAL_METRICS = ("avg_response_time_s", "avg_tokens_used")
# Users' feedback on production traffic served like each variant (`--feedback`, eval/feedback.py).
FEEDBACK_METRICS = ("satisfaction", "task_completion_rate", "escalation_rate", "feedback_score")
ALL_METRICS = (
    *REFERENCE_METRICS,
    STRING_METRIC,
    JSON_METRIC,
    *CONTEXT_METRICS,
    *JUDGE_METRICS,
    HALLUCINATION_METRIC,
    TOXICITY_METRIC,
    *OPERATIONAL_METRICS,
    *FEEDBACK_METRICS,
)
# Gates on these are maxima (`toxicity=0.01` means at most 0.01); on every other metric, minima.
LOWER_IS_BETTER = frozenset({HALLUCINATION_METRIC, TOXICITY_METRIC, *OPERATIONAL_METRICS, "escalation_rate"})
SCORE_DIGITS = 6
FAILURE_CHARS = 300  # of a metric's exception message in the results


def load_ragas() -> None:
    """Import ragas with its usage analytics off: it would post to the internet from inside an eval."""
    os.environ["RAGAS_DO_NOT_TRACK"] = "true"
    import ragas  # noqa: F401


@dataclass
class RowScores:
    """A row's scores: metric -> value, None where the metric failed (its reason in `failures`)."""

    scores: dict[str, float | None] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def set(self, name: str, value: float) -> None:
        if math.isnan(value):
            self.fail(name, "the metric returned NaN")
        else:
            # Clamped and rounded: BLEU overshoots 1 by float error and ragas' average precision adds a 1e-10
            # epsilon, and neither should decide a `--min ...=1` gate.
            self.scores[name] = round(min(1.0, max(0.0, float(value))), SCORE_DIGITS)

    def fail(self, name: str, reason: str) -> None:
        self.scores[name] = None
        self.failures[name] = reason[:FAILURE_CHARS]


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


class Scorer:
    """Holds the ragas metric objects for a run; `score` is safe to call for many rows concurrently."""

    def __init__(self, judge: JudgeMetrics | None = None, hallucination_threshold: float | None = None) -> None:
        load_ragas()
        from llm_serve.config import GroundednessMonitorConfig
        from llm_serve.safety.toxicity import toxicity_scores

        toxicity_scores(["warm-up"])  # loads the classifier now: a broken install fails before any request
        defaults = GroundednessMonitorConfig()
        self.hallucination_threshold = (
            defaults.threshold if hallucination_threshold is None else hallucination_threshold
        )
        self.support_threshold = defaults.support_threshold
        from ragas.metrics._context_precision import NonLLMContextPrecisionWithReference
        from ragas.metrics._context_recall import NonLLMContextRecall
        from ragas.metrics.collections import BleuScore, CHRFScore, ExactMatch, RougeScore, StringPresence

        self.reference = {
            "rouge_score": RougeScore(name="rouge_score", rouge_type="rougeL", mode="fmeasure"),
            "bleu_score": BleuScore(name="bleu_score"),
            "chrf_score": CHRFScore(name="chrf_score"),
            "exact_match": ExactMatch(name="exact_match"),
        }
        self.presence = StringPresence(name=STRING_METRIC)
        self.context_precision = NonLLMContextPrecisionWithReference()
        self.context_recall = NonLLMContextRecall()
        self.judge = judge

    async def _guard(self, out: RowScores, name: str, coro: Any) -> None:
        try:
            result = await coro
        except Exception as exc:  # a metric failing is a result for this row, never the end of the run
            out.fail(name, _reason(exc))
            return
        out.set(name, float(getattr(result, "value", result)))

    async def score(self, row: EvalRow, answer: Answer) -> RowScores:
        """Every metric that applies to this row; a failed request has no scores at all."""
        out = RowScores()
        if not answer.ok or answer.answer is None:
            return out
        response = answer.answer.strip()  # exact match should not hinge on a trailing newline
        if row.reference is not None:
            reference = row.reference.strip()
            for name, metric in self.reference.items():
                await self._guard(out, name, metric.ascore(reference=reference, response=response))
        needles = row.must_contain or ((row.reference.strip(),) if row.reference else ())
        if needles:
            found = [await self.presence.ascore(reference=n, response=response) for n in needles]
            out.set(STRING_METRIC, sum(r.value for r in found) / len(found))
        if row.expect_json:
            out.set(JSON_METRIC, float(json_parses(response, row.json_schema)))
        self._score_safety(out, response, answer)
        await self._score_contexts(out, row, answer)
        await self._score_judged(out, row, answer, response)
        return out

    def _score_safety(self, out: RowScores, response: str, answer: Answer) -> None:
        from llm_serve.eval.groundedness import score_groundedness
        from llm_serve.safety.toxicity import toxicity

        out.set(TOXICITY_METRIC, toxicity(response))
        if answer.retrieved_contexts:  # a refusal for lack of context is not a hallucination: nothing to check
            grounded = score_groundedness(response, list(answer.retrieved_contexts), self.support_threshold)
            out.set(HALLUCINATION_METRIC, float(grounded.score < self.hallucination_threshold))

    async def _score_contexts(self, out: RowScores, row: EvalRow, answer: Answer) -> None:
        if not row.reference_contexts or answer.retrieved_contexts is None:
            return
        if not answer.retrieved_contexts:
            # Retrieval found nothing (llm-serve then refuses): every reference passage was missed.
            out.set("context_precision", 0.0)
            out.set("context_recall", 0.0)
            return
        from ragas.dataset_schema import SingleTurnSample

        sample = SingleTurnSample(
            retrieved_contexts=list(answer.retrieved_contexts), reference_contexts=list(row.reference_contexts)
        )
        await self._guard(out, "context_precision", self.context_precision.single_turn_ascore(sample))
        await self._guard(out, "context_recall", self.context_recall.single_turn_ascore(sample))

    async def _score_judged(self, out: RowScores, row: EvalRow, answer: Answer, response: str) -> None:
        if self.judge is None:
            return
        faithful = bool(answer.retrieved_contexts)  # only what was retrieved can make an answer faithful
        relevant = self.judge.answer_relevancy is not None
        if not response:
            for name, applies in (("faithfulness", faithful), ("answer_relevancy", relevant)):
                if applies:
                    out.fail(name, "the answer is empty")
            return
        if faithful:
            coro = self.judge.faithfulness.ascore(
                user_input=row.question, response=response, retrieved_contexts=list(answer.retrieved_contexts or ())
            )
            await self._guard(out, "faithfulness", coro)
        if relevant:
            coro = self.judge.answer_relevancy.ascore(user_input=row.question, response=response)
            await self._guard(out, "answer_relevancy", coro)


def json_parses(text: str, schema: dict[str, Any] | None) -> bool:
    """What a client calling `json.loads` on the message content gets: no fence stripping, no repair."""
    import json

    try:
        value = json.loads(text)
    except ValueError:
        return False
    if schema is None:
        return True
    from jsonschema import validators

    return validators.validator_for(schema)(schema).is_valid(value)


async def score_all(
    scorer: Scorer,
    rows: list[EvalRow],
    answers: dict[str, list[Answer]],
    concurrency: int,
    progress: bool = True,
) -> dict[str, list[RowScores]]:
    """Scores per variant label, in row order. Rows run concurrently only when a judge is waited on."""
    width = concurrency if scorer.judge is not None else 1
    gate = asyncio.Semaphore(width)
    total = sum(len(a) for a in answers.values())
    bar = tqdm(total=total, desc="scoring", unit="row", disable=not progress, leave=False)

    async def one(row: EvalRow, answer: Answer) -> RowScores:
        async with gate:
            result = await scorer.score(row, answer)
        bar.update(1)
        return result

    try:
        out: dict[str, list[RowScores]] = {}
        for label, variant_answers in answers.items():
            out[label] = list(await asyncio.gather(*(one(r, a) for r, a in zip(rows, variant_answers, strict=True))))
        return out
    finally:
        bar.close()
