"""`run_eval`: dataset -> answers from each variant -> ragas scores -> results files -> exit code.

Everything that can be checked without the endpoint (flags, gates' metric names, the dataset, the
URLs) is checked first, so a mistake costs a second, not a run. Exit codes: 0 all good, 1 a gate
failed or a variant had more failed rows than --max-errors, 2 the command could not be carried out
as given (bad flags, bad dataset, unreachable endpoint, a gate on a metric this run did not compute).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from llm_serve import __version__
from llm_serve.eval.client import Answer, answer_all, api_base, check_reachable, http_client, resolve_api_key
from llm_serve.eval.dataset import EvalRow, file_digest, load_dataset
from llm_serve.eval.report import (
    Gate,
    GateResult,
    available_metrics,
    check_gate_names,
    evaluate_gates,
    render_markdown,
    variant_result,
    write_results,
)
from llm_serve.eval.settings import EvalOptions
from llm_serve.eval.variants import UsageError, Variant, build_variants

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass
class EvalOutcome:
    """What the CLI prints and returns: the table for stdout, `messages` for stderr."""

    exit_code: int
    out_dir: Path
    results: dict[str, Any]
    markdown: str
    messages: list[str] = field(default_factory=list)
    tracking_run: str | None = None  # the MLflow parent run, when the run was logged


def default_out_dir(root: Path) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    candidate, n = root / stamp, 1
    while candidate.exists():  # two runs in the same second must not overwrite each other
        n += 1
        candidate = root / f"{stamp}-{n}"
    return candidate


async def _collect(
    options: EvalOptions, rows: list[EvalRow], variants: list[Variant]
) -> tuple[dict[str, list[Answer]], dict[str, list[Any]], dict[str, Any] | None, list[dict[str, Any]] | None]:
    from llm_serve.eval.metrics import Scorer, score_all

    base = api_base(options.endpoint)
    api_key = resolve_api_key(options.api_key)
    async with http_client(options, api_key) as client:
        await check_reachable(client, base, "endpoint")
        feedback = None
        if options.feedback:  # before any row runs: a key that may not read it is a usage error, not a late one
            from llm_serve.eval.feedback import fetch_feedback

            feedback = await fetch_feedback(client, base)
        judge = None
        if options.judge is not None:
            from llm_serve.eval.judge import build_judge

            async with http_client(options, None) as probe:  # the endpoint's key is not the judge's business
                await check_reachable(probe, api_base(options.judge.endpoint), "judge endpoint")
            judge = build_judge(options.judge, api_key)
        try:
            scorer = Scorer(judge)  # imports ragas now: a broken install fails before any request
            answers = {v.label: await answer_all(client, base, rows, v, options) for v in variants}
            scores = await score_all(scorer, rows, answers, options.concurrency, options.progress)
        finally:
            if judge is not None:
                await judge.aclose()
    return answers, scores, judge.describe() if judge else None, feedback


def _notes(options: EvalOptions, rows: list[EvalRow], answers: dict[str, list[Answer]]) -> list[str]:
    """Why a metric someone might expect is missing from the table."""
    notes: list[str] = []
    if options.rag and not any(r.reference_contexts for r in rows):
        notes.append("context_precision/context_recall need `reference_contexts` in the dataset")
    if not options.rag and any(r.reference_contexts for r in rows):
        notes.append("context_precision/context_recall need retrieved contexts: run with --rag COLLECTION")
    if any("sources_without_text" in a.notes for batch in answers.values() for a in batch):
        notes.append(
            "the endpoint returned `sources` without their `text` (no rag.include_text support?): "
            "context metrics and faithfulness skipped those rows"
        )
    if options.judge is not None:
        if not options.rag:
            notes.append("faithfulness needs retrieved contexts: run with --rag COLLECTION")
        if not options.judge.embedding_model:
            notes.append("answer_relevancy needs --judge-embedding-model")
    return notes


def _track(options: EvalOptions, results: dict[str, Any], files: list[Path]) -> tuple[str, str | None]:
    """Log to MLflow; a store that cannot be written is reported, never the end of a finished evaluation."""
    from llm_serve.config import load_config
    from llm_serve.eval.tracking import log_eval
    from llm_serve.tracking import Tracker

    try:
        config = load_config()
        if not config.tracking.enabled and options.tracking_uri is None:
            return "mlflow: not logged (tracking.enabled is false in the config)", None
        tracker = Tracker.from_config(config, options.tracking_uri)
        experiment = options.experiment or config.tracking.eval_experiment
        logged = log_eval(tracker, results, files, experiment, options.run_name)
    except Exception as exc:  # ConfigError, MlflowException, sqlalchemy's, OSError: all only reported
        return f"warning: not logged to MLflow: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", None
    return (
        f"mlflow: run {logged.parent_run_id} in experiment {logged.experiment!r} at {logged.uri}",
        logged.parent_run_id,
    )


def run_eval(options: EvalOptions) -> EvalOutcome:
    """Run one evaluation. Raises UsageError / DatasetError (exit 2) for what is wrong before any work."""
    gates = [Gate.parse(spec) for spec in options.gates]
    check_gate_names(gates)
    variants = build_variants(options.model, options.prompt, options.compare)
    api_base(options.endpoint)  # a malformed URL is a usage error, before the dataset is read
    if options.judge is not None:
        api_base(options.judge.endpoint)
    rows = load_dataset(options.dataset, options.limit, options.max_listed_errors)
    out_dir = options.out or default_out_dir(options.out_root)

    answers, scores, judge, feedback = asyncio.run(_collect(options, rows, variants))

    import ragas

    results: dict[str, Any] = {
        "schema": 1,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "llm_serve_version": __version__,
        "ragas_version": ragas.__version__,
        "dataset": {"path": str(options.dataset), "sha256": file_digest(options.dataset), "rows": len(rows)},
        "endpoint": api_base(options.endpoint),
        "rag": options.rag,
        "judge": judge,
        "settings": {
            "max_tokens": options.max_tokens,
            "temperature": options.temperature,
            "concurrency": options.concurrency,
            "no_cache": options.no_cache,
            "limit": options.limit,
            "max_errors": options.max_errors,
        },
        "notes": _notes(options, rows, answers),
        "max_listed": options.max_listed_errors,
        "variants": [variant_result(v, rows, answers[v.label], scores[v.label]) for v in variants],
    }
    if feedback is not None:
        from llm_serve.eval.feedback import feedback_metrics

        for variant, result in zip(variants, results["variants"], strict=True):
            result["summary"]["metrics"].update(feedback_metrics(feedback, answers[variant.label]))
        results["feedback"] = {"source": "/admin/usage?period=total", "groups": len(feedback)}
        results["notes"].append(
            "satisfaction, task_completion_rate, escalation_rate and feedback_score are users' feedback on the "
            "production traffic served by each variant's model, adapter and prompt version, not this dataset's rows"
        )
    results["metrics"] = available_metrics(results)

    messages: list[str] = []
    exit_code = EXIT_OK
    gate_results: list[GateResult] = []
    try:
        gate_results = evaluate_gates(results, gates)
    except UsageError as exc:
        messages.append(f"error: {exc}")
        exit_code = EXIT_USAGE
    failed_gates = [g for g in gate_results if not g.passed]
    for g in failed_gates:
        messages.append(f"gate failed: {g.line(variants[0].label)}")
    for variant in results["variants"]:
        failed = variant["summary"]["failed"]
        if failed > options.max_errors:
            messages.append(
                f"{failed} of {variant['summary']['rows']} row(s) failed on {variant['label']} "
                f"(--max-errors {options.max_errors})"
            )
            exit_code = max(exit_code, EXIT_FAILED)
    if failed_gates:
        exit_code = max(exit_code, EXIT_FAILED)
    results["gates"] = [g.as_dict() for g in gate_results]
    results["exit_code"] = exit_code

    markdown = render_markdown(results, gate_results)
    json_path, md_path = write_results(out_dir, results, markdown)
    messages.append(f"results: {json_path} and {md_path}")
    tracking_run = None
    if options.tracking:
        message, tracking_run = _track(options, results, [json_path, md_path])
        messages.append(message)
    return EvalOutcome(exit_code, out_dir, results, markdown, messages, tracking_run)
