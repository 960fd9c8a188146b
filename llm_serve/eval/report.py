"""Aggregates, the results files (JSON for machines, Markdown for people) and the CI gates.

Means are over the rows a metric could score: failed requests and failed metric calls are counted
beside the mean rather than averaged in as zeros, so a flaky endpoint shows up as errors (and fails
--max-errors) instead of silently dragging the quality numbers down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_serve.eval.metrics import ALL_METRICS, LOWER_IS_BETTER
from llm_serve.eval.variants import UsageError

if TYPE_CHECKING:
    from llm_serve.eval.client import Answer
    from llm_serve.eval.dataset import EvalRow
    from llm_serve.eval.metrics import RowScores
    from llm_serve.eval.variants import Variant

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
SCHEMA_VERSION = 1


GATE_DIRECTIONS = ("min", "max")


@dataclass(frozen=True)
class Gate:
    """A threshold on the primary variant's mean: at least it (`min`) or at most it (`max`).

    Written `METRIC=VALUE[:min|:max]`; without a suffix the metric's own sense decides (a maximum for
    toxicity, hallucination_rate, response time and tokens, a minimum for the quality scores), so
    `toxicity=0.01` cannot be misread as "at least 1% toxic".
    """

    metric: str
    threshold: float
    direction: str = "min"

    @classmethod
    def parse(cls, spec: str, direction: str | None = None, flag: str = "--gate") -> Gate:
        metric, eq, value = spec.partition("=")
        metric = metric.strip()
        value, colon, suffix = value.partition(":")
        try:
            threshold = float(value)
        except ValueError:
            threshold = math.nan
        suffix = suffix.strip().lower()
        bad_suffix = bool(colon) and (suffix not in GATE_DIRECTIONS or (direction is not None and suffix != direction))
        if not eq or not metric or math.isnan(threshold) or bad_suffix:
            example = "rouge_score=0.3" if direction != "max" else "toxicity=0.01"
            form = "METRIC=VALUE[:min|:max]" if direction is None else "METRIC=VALUE"
            raise UsageError(f"bad {flag} {spec!r}: expected {form}, e.g. {example}")
        chosen = direction or (suffix if colon else ("max" if metric in LOWER_IS_BETTER else "min"))
        return cls(metric, threshold, chosen)

    @property
    def spec(self) -> str:
        return f"{self.metric}={self.threshold:g}:{self.direction}"


@dataclass(frozen=True)
class GateResult:
    gate: Gate
    value: float | None

    @property
    def passed(self) -> bool:
        if self.value is None:
            return False
        if self.gate.direction == "max":
            return self.value <= self.gate.threshold
        return self.value >= self.gate.threshold

    def line(self, label: str | None = None) -> str:
        on = f" on {label}" if label else ""
        need = ">=" if self.gate.direction == "min" else "<="
        if self.value is None:
            return f"FAIL {self.gate.metric}: no row was scored{on} (needs {need} {self.gate.threshold:g})"
        fail = "<" if self.gate.direction == "min" else ">"
        verdict, op = ("PASS", need) if self.passed else ("FAIL", fail)
        return f"{verdict} {self.gate.metric} = {self.value:.4f} {op} {self.gate.threshold:g}{on}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "metric": self.gate.metric,
            self.gate.direction: self.gate.threshold,
            "value": self.value,
            "passed": self.passed,
        }


def gate_specs(minima: Sequence[str] = (), maxima: Sequence[str] = (), gates: Sequence[str] = ()) -> list[str]:
    """`--min`, `--max` and `--gate` flags as normalised `METRIC=VALUE:direction` specs (UsageError on a bad one)."""
    specs = [Gate.parse(spec, "min", "--min").spec for spec in minima]
    specs += [Gate.parse(spec, "max", "--max").spec for spec in maxima]
    return specs + [Gate.parse(spec).spec for spec in gates]


def check_gate_names(gates: Sequence[Gate]) -> None:
    """Before any request: a misspelt metric is a usage error, not an hour of evaluation and then exit 2."""
    unknown = [g.metric for g in gates if g.metric not in ALL_METRICS]
    if unknown:
        raise UsageError(f"unknown metric(s) in gates: {', '.join(unknown)} (metrics: {', '.join(ALL_METRICS)})")


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default), without pulling numpy in for it."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def summarize(answers: Sequence[Answer], scores: Sequence[RowScores]) -> dict[str, Any]:
    """One variant's aggregate: per-metric mean/n/failed, failed requests, latency and cost."""
    metrics: dict[str, dict[str, Any]] = {}
    for name in ALL_METRICS:
        values = [s.scores[name] for s in scores if name in s.scores]
        if not values:
            continue
        scored = [v for v in values if v is not None]
        metrics[name] = {
            "mean": sum(scored) / len(scored) if scored else None,
            "n": len(scored),
            "failed": len(values) - len(scored),
        }
    latencies = [a.latency_ms for a in answers if a.ok and a.latency_ms is not None]
    costs = [a.cost_usd for a in answers if a.cost_usd is not None]
    tokens = [t for a in answers if a.ok and (t := total_tokens(a.usage)) is not None]
    for name, values in (("avg_response_time_s", [ms / 1000.0 for ms in latencies]), ("avg_tokens_used", tokens)):
        if values:
            metrics[name] = {"mean": sum(values) / len(values), "n": len(values), "failed": 0}
    return {
        "rows": len(answers),
        "answered": sum(1 for a in answers if a.ok),
        "failed": sum(1 for a in answers if not a.ok),
        "metrics": metrics,
        "latency_ms": {"p50": percentile(latencies, 50), "p95": percentile(latencies, 95)},
        "cost_usd": sum(costs) if costs else None,
    }


def total_tokens(usage: dict[str, Any] | None) -> int | None:
    """`usage.total_tokens`, or prompt + completion where a server leaves the total out."""
    if not usage:
        return None
    total = usage.get("total_tokens")
    if isinstance(total, int | float) and not isinstance(total, bool):
        return int(total)
    parts = [usage.get("prompt_tokens"), usage.get("completion_tokens")]
    if all(isinstance(p, int) and not isinstance(p, bool) for p in parts):
        return int(parts[0]) + int(parts[1])
    return None


def variant_result(
    variant: Variant, rows: Sequence[EvalRow], answers: Sequence[Answer], scores: Sequence[RowScores]
) -> dict[str, Any]:
    per_row = []
    for row, answer, score in zip(rows, answers, scores, strict=True):
        per_row.append(
            {
                "id": row.id,
                "line": row.line,
                "question": row.question,
                "reference": row.reference,
                **answer.as_dict(),
                "scores": score.scores,
                "score_failures": score.failures,
            }
        )
    return {**variant.as_dict(), "summary": summarize(answers, scores), "rows": per_row}


def available_metrics(results: dict[str, Any]) -> list[str]:
    """Metrics this run computed for at least one row of any variant (scored or failed)."""
    seen = {m for v in results["variants"] for m in v["summary"]["metrics"]}
    return [m for m in ALL_METRICS if m in seen]


def evaluate_gates(results: dict[str, Any], gates: Sequence[Gate]) -> list[GateResult]:
    """Gates apply to the primary variant, the one CI is deciding to ship."""
    available = available_metrics(results)
    missing = [g.metric for g in gates if g.metric not in available]
    if missing:
        raise UsageError(
            f"gates name metric(s) not computed in this run: {', '.join(missing)} "
            f"(available: {', '.join(available) or 'none'})"
        )
    primary = results["variants"][0]["summary"]["metrics"]
    return [GateResult(g, primary[g.metric]["mean"]) for g in gates]


# ---- Markdown ---------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _delta(value: float | None, base: float | None, digits: int = 3) -> str:
    if value is None or base is None:
        return "-"
    return f"{value - base:+.{digits}f}"


def _metric_cell(entry: dict[str, Any] | None) -> str:
    if entry is None:
        return "-"
    failed = f", {entry['failed']} failed" if entry["failed"] else ""
    return f"{_num(entry['mean'])} (n={entry['n']}{failed})"


def render_markdown(results: dict[str, Any], gate_results: Sequence[GateResult] = ()) -> str:
    variants = results["variants"]
    summaries = [v["summary"] for v in variants]
    compare = len(variants) > 1
    header = ["metric", *(v["label"] for v in variants)]
    if compare:
        header += [f"Δ {v['label']}" for v in variants[1:]]
    lines = [
        f"# llm-serve eval: {Path(results['dataset']['path']).name}",
        "",
        f"{results['dataset']['rows']} rows against {results['endpoint']}"
        + (f", retrieval from `{results['rag']}`" if results["rag"] else "")
        + (f", judged by `{results['judge']['model']}`" if results["judge"] else "")
        + f" ({results['created_at']})",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---", *[":---:"] * (len(header) - 1)]) + "|",
    ]

    def table_row(name: str, cells: list[str], values: list[float | None], digits: int) -> None:
        deltas = [_delta(v, values[0], digits) for v in values[1:]] if compare else []
        lines.append("| " + " | ".join([name, *cells, *deltas]) + " |")

    for metric in available_metrics(results):
        entries = [s["metrics"].get(metric) for s in summaries]
        table_row(metric, [_metric_cell(e) for e in entries], [e["mean"] if e else None for e in entries], 3)
    failed = [float(s["failed"]) for s in summaries]
    table_row("failed rows", [str(s["failed"]) for s in summaries], failed, 0)
    for q in ("p50", "p95"):
        values = [s["latency_ms"][q] for s in summaries]
        table_row(f"latency {q} (ms)", [_num(v, 0) for v in values], values, 0)
    costs = [s["cost_usd"] for s in summaries]
    table_row("cost (USD)", [_num(c, 6) for c in costs], costs, 6)

    if results.get("notes"):
        lines += ["", *(f"- note: {n}" for n in results["notes"])]
    if gate_results:
        lines += ["", f"Gates (on {variants[0]['label']}):", ""]
        lines += [f"- {g.line()}" for g in gate_results]
    failures = [(v["label"], r) for v in variants for r in v["rows"] if r["error"] is not None]
    if failures:
        lines += ["", "Failed rows:", ""]
        lines += [f"- {failure_line(label, row)}" for label, row in failures[: results["max_listed"]]]
        if len(failures) > results["max_listed"]:
            lines.append(f"- ... and {len(failures) - results['max_listed']} more (see {RESULTS_JSON})")
    return "\n".join(lines) + "\n"


def failure_line(label: str, row: dict[str, Any]) -> str:
    error = row["error"]
    status = f"HTTP {error['status']}" if error.get("status") else "no response"
    kind = "/".join(str(x) for x in (error.get("type"), error.get("code")) if x)
    return f"row {row['id']} (line {row['line']}) on {label}: {status}{' ' + kind if kind else ''}: {error['message']}"


# ---- files ------------------------------------------------------------------------------------------


def _finite(obj: Any) -> Any:
    """JSON has no NaN: a metric that could not be computed is null (its reason is beside it)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_results(out_dir: Path, results: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / RESULTS_JSON, out_dir / RESULTS_MD
    json_path.write_text(json.dumps(_finite(results), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
