"""`llm-serve eval` against the real stack: the bundled Nimbus set, retrieval from the sample manual.

SmolLM2-135M is a weak model, so answer quality is not asserted beyond "something was scored"; the
point is that the whole path (rag with chunk texts, ragas scoring, results files, the CI gate) works
on the real server. A few rows keep it short.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
import urllib.request
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
    assert_in_mlflow_ui(done.stderr, results)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def assert_in_mlflow_ui(stderr: str, results: dict) -> None:
    """The run is in the stack home's MLflow store, as `mlflow ui` serves it (its REST API, which the UI reads)."""
    found = re.search(r"mlflow: run (\w+) in experiment 'llm-serve-eval' at (\S+)", stderr)
    assert found, stderr[-2000:]
    run_id, uri = found.groups()
    port = _free_port()
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    ui = subprocess.Popen(
        [str(mlflow_bin), "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/runs/get?run_id={run_id}", timeout=5) as resp:
                    parent = json.load(resp)["run"]
                break
            except OSError:
                assert time.monotonic() < deadline and ui.poll() is None, "mlflow ui did not come up"
                time.sleep(1)
        params = {p["key"]: p["value"] for p in parent["data"]["params"]}
        assert params["dataset_sha256"] == results["dataset"]["sha256"] and params["rag_collection"] == COLLECTION
        search = urllib.request.Request(
            f"{base}/runs/search",
            data=json.dumps(
                {
                    "experiment_ids": [parent["info"]["experiment_id"]],
                    "filter": f"tags.`mlflow.parentRunId` = '{run_id}'",
                }
            ).encode(),
            headers={"content-type": "application/json"},
        )
        with urllib.request.urlopen(search, timeout=10) as resp:
            (child,) = json.load(resp)["runs"]
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        summary = results["variants"][0]["summary"]["metrics"]
        for name in ("rouge_score", "hallucination_rate", "toxicity", "avg_response_time_s", "avg_tokens_used"):
            assert metrics[name] == pytest.approx(summary[name]["mean"]), name
    finally:
        ui.terminate()
        ui.wait(15)


def test_eval_gate_fails_on_an_impossible_threshold(stack, manual_ingested, tmp_path: Path) -> None:
    done = evaluate(stack, tmp_path / "gated", "--min", "rouge_score=0.999", "--min", "context_recall=0.01")
    assert done.returncode == 1, done.stdout + done.stderr
    assert "gate failed: FAIL rouge_score" in done.stderr
    gates = json.loads((tmp_path / "gated" / "results.json").read_text())["gates"]
    assert [g["metric"] for g in gates] == ["rouge_score", "context_recall"]
    assert gates[0]["passed"] is False and gates[1]["passed"] is True


def test_eval_compares_the_quantized_pool_side_by_side(stack, manual_ingested, tmp_path: Path) -> None:
    """The full-precision and the W8A8 pool scored on the same rows in one run (quality figures over the whole
    set are in benchmarks/results/quantized.json)."""
    quantized = "smollm2-135m-instruct-w8a8"
    out = tmp_path / "quantized"
    done = evaluate(stack, out, "--compare", quantized, "--no-tracking")
    assert done.returncode == 0, done.stdout + done.stderr
    variants = json.loads((out / "results.json").read_text())["variants"]
    assert [v["model"] for v in variants] == [stack.model, quantized]
    for variant in variants:
        summary = variant["summary"]
        assert summary["rows"] == int(ROWS) and summary["failed"] == 0, variant["model"]
        assert {row["served_model"] for row in variant["rows"]} == {variant["model"]}
        for name in ("rouge_score", "string_present", "avg_tokens_used"):
            assert summary["metrics"][name]["n"] == int(ROWS), (variant["model"], name)
    assert quantized in (out / "results.md").read_text()
