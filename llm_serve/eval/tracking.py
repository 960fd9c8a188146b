"""One `llm-serve eval` as MLflow runs: a parent run for the invocation, a nested run per variant.

The parent holds what is common (dataset path, rows and content hash, endpoint, settings, gates, exit
code) and the results files; each child is one column of the comparison, so MLflow's run comparison
view lines variants up metric by metric. A variant records the prompt it asked for and, separately,
the `name@version+hash` the server reports it actually rendered (`x-llm-serve-prompt`): an alias or a
weighted split can serve a different version than the one requested, and the score belongs to what
was served.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llm_serve.tracking import Tracker

EVAL_KIND = "eval"
VARIANT_KIND = "eval-variant"


@dataclass(frozen=True)
class LoggedEval:
    parent_run_id: str
    variant_run_ids: dict[str, str]
    experiment: str
    uri: str


def _split_model(model: str) -> tuple[str, str | None]:
    """`base:adapter` is how llm-serve names an adapter (also `base:adapter@v3`); a plain id has none."""
    base, colon, adapter = model.partition(":")
    return (base, adapter) if colon and adapter else (model, None)


def served_prompts(rows: list[dict[str, Any]]) -> list[str]:
    """The prompt refs the server rendered, most frequent first (more than one under a weighted alias)."""
    counts = Counter(r["prompt_ref"] for r in rows if r.get("prompt_ref"))
    return [ref for ref, _ in counts.most_common()]


def _variant_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    metrics: dict[str, float | None] = {name: entry["mean"] for name, entry in summary["metrics"].items()}
    metrics |= {f"{name}_n": float(entry["n"]) for name, entry in summary["metrics"].items()}
    metrics |= {
        "rows": float(summary["rows"]),
        "answered": float(summary["answered"]),
        "failed_rows": float(summary["failed"]),
        "latency_p50_ms": summary["latency_ms"]["p50"],
        "latency_p95_ms": summary["latency_ms"]["p95"],
        "cost_usd": summary["cost_usd"],
    }
    return metrics


def _gate_text(gate: dict[str, Any]) -> str:
    return f"{gate['metric']}>={gate['min']}" if "min" in gate else f"{gate['metric']}<={gate['max']}"


def log_eval(
    tracker: Tracker, results: dict[str, Any], files: list[Path], experiment: str, run_name: str | None = None
) -> LoggedEval:
    dataset = results["dataset"]
    name = run_name or f"eval {Path(dataset['path']).name}"
    parent = tracker.start_run(experiment, name, tags={"llm_serve.kind": EVAL_KIND})
    failed = True
    try:
        gates = results.get("gates") or []
        tracker.log(
            parent,
            params={
                "dataset_path": dataset["path"],
                "dataset_sha256": dataset["sha256"],
                "dataset_rows": dataset["rows"],
                "endpoint": results["endpoint"],
                "rag_collection": results["rag"],
                "judge_model": (results.get("judge") or {}).get("model"),
                "variants": ", ".join(v["label"] for v in results["variants"]),
                "gates": ", ".join(_gate_text(g) for g in gates) or None,
                "llm_serve_version": results["llm_serve_version"],
                "ragas_version": results["ragas_version"],
                **{f"settings.{k}": v for k, v in results["settings"].items()},
            },
            metrics={
                "exit_code": float(results["exit_code"]),
                "gates_passed": float(sum(bool(g["passed"]) for g in gates)),
                "gates_failed": float(sum(not g["passed"] for g in gates)),
            },
            tags={"llm_serve.dataset_sha256": dataset["sha256"]},
        )
        children: dict[str, str] = {}
        for index, variant in enumerate(results["variants"]):
            base, adapter = _split_model(variant["model"])
            served = served_prompts(variant["rows"])
            served_models = sorted({r["served_model"] for r in variant["rows"] if r.get("served_model")})
            tags = {
                "llm_serve.kind": VARIANT_KIND,
                "llm_serve.model": variant["model"],
                "llm_serve.primary": str(index == 0).lower(),
                "llm_serve.dataset_sha256": dataset["sha256"],
            }
            if served:
                tags["llm_serve.prompt"] = served[0]
            child = tracker.start_run(experiment, variant["label"], parent=parent, tags=tags)
            tracker.log(
                child,
                params={
                    "model": variant["model"],
                    "base_model": base,
                    "adapter": adapter,
                    "prompt_requested": variant["prompt"],
                    "prompt_served": ", ".join(served) or None,
                    "served_model": ", ".join(served_models) or None,
                    "dataset_sha256": dataset["sha256"],
                    "primary": index == 0,
                },
                metrics=_variant_metrics(variant["summary"]),
            )
            tracker.end(child)
            children[variant["label"]] = child
        tracker.log_artifacts(parent, files)
        failed = False
        return LoggedEval(parent, children, experiment, tracker.uri)
    finally:
        tracker.end(parent, failed=failed)
