"""`llm-serve eval` against the real stack: the bundled Nimbus set, retrieval from the sample manual.

SmolLM2-135M is a weak model, so answer quality is not asserted beyond "something was scored"; the
point is that the whole path (rag with chunk texts, ragas scoring, results files, the CI gate) works
on the real server. A few rows keep it short.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DATASET = ROOT / "data" / "eval" / "nimbus_rag.jsonl"
COLLECTION = "nimbus_manual"
ROWS = "4"
EVAL_TIMEOUT_S = 600


@pytest.fixture(scope="module")
def manual_ingested(stack) -> None:
    """The manual in the collection test_rag.py uses; ingestion is idempotent, so this is cheap if it is there."""
    out = stack.cli("ingest", str(ROOT / "data" / "manual"), "--collection", COLLECTION, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def evaluate(stack, out: Path, *extra: str):
    return stack.cli(
        "eval",
        "--dataset",
        str(DATASET),
        "--endpoint",
        stack.url,
        "--model",
        stack.model,
        "--rag",
        COLLECTION,
        "--limit",
        ROWS,
        "--concurrency",
        "2",
        "--max-tokens",
        "48",
        "--no-progress",
        "--out",
        str(out),
        *extra,
        timeout=EVAL_TIMEOUT_S,
    )


def test_eval_scores_the_bundled_set_with_retrieval(stack, manual_ingested, tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = evaluate(stack, out)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads((out / "results.json").read_text())
    variant = results["variants"][0]
    summary = variant["summary"]
    assert summary["rows"] == int(ROWS) and summary["failed"] == 0
    for name in ("rouge_score", "chrf_score", "string_present", "context_precision", "context_recall"):
        entry = summary["metrics"][name]
        assert entry["n"] > 0 and 0.0 <= entry["mean"] <= 1.0, (name, entry)
    assert summary["metrics"]["context_recall"]["mean"] > 0  # retrieval finds the manual's passages
    assert summary["latency_ms"]["p50"] > 0 and summary["cost_usd"] is not None  # the test config sets a price
    row = variant["rows"][0]
    assert row["served_model"] == stack.model and row["retrieved_contexts"]
    assert all(isinstance(t, str) and t for t in row["retrieved_contexts"])
    assert (out / "results.md").read_text() in done.stdout


def test_eval_gate_fails_on_an_impossible_threshold(stack, manual_ingested, tmp_path: Path) -> None:
    done = evaluate(stack, tmp_path / "gated", "--min", "rouge_score=0.999", "--min", "context_recall=0.01")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate failed: FAIL rouge_score" in done.stderr
    gates = json.loads((tmp_path / "gated" / "results.json").read_text())["gates"]
    assert [g["metric"] for g in gates] == ["rouge_score", "context_recall"]
    assert gates[0]["passed"] is False and gates[1]["passed"] is True
