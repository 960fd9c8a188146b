"""The arithmetic behind published figures: what a benchmark aggregates must be what its report says."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from benchmarks.load_test import aggregate, build_report
from benchmarks.rag import ANSWER_SET
from train.job import summary, tokens_per_s

ROOT = Path(__file__).resolve().parents[2]


def test_rag_answer_set_asks_ten_distinct_facts_all_in_the_manual() -> None:
    manual = " ".join(
        re.sub(r"<[^>]+>", " ", p.read_text()) for p in (ROOT / "data" / "manual").iterdir() if p.is_file()
    )
    manual = re.sub(r"\s+", " ", manual)
    facts = [fact for _, fact in ANSWER_SET]
    assert len(facts) == len(set(facts)) == 10
    assert [f for f in facts if f not in manual] == []


def test_training_rate_is_total_tokens_over_total_time() -> None:
    # One fast short step and one slow long one: a mean of per-step rates says 550, the truth is 190.
    steps = [
        {"step": 1, "loss": 2.0, "tokens_per_s": 1000.0, "tokens": 100, "step_s": 0.1},
        {"step": 2, "loss": 1.9, "tokens_per_s": 1000.0, "tokens": 100, "step_s": 0.1},
        {"step": 3, "loss": 1.8, "tokens_per_s": 100.0, "tokens": 1000, "step_s": 10.0},
    ]
    assert tokens_per_s(steps[1:]) == 1100 / 10.1
    assert summary(steps)["tokens_per_s"] == 1100 / 10.1  # the first step (start-up) is left out


def _run(tok_s: float, ttft: float, startup: float) -> dict:
    summary = {"output_tokens_per_s": tok_s, "requests_per_s": tok_s / 64, "ttft_ms_p50": ttft}
    for key in ("ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99"):
        summary[key] = ttft
    return {"startup_s": startup, "scenarios": {"c16": {"summary": summary, "records": []}}}


def test_load_test_reports_medians_over_rounds_and_states_each_target() -> None:
    results = {
        "llm-serve": [_run(100, 210, 60), _run(90, 230, 40), _run(120, 200, 50)],
        "vllm-same-args": [_run(95, 200, 30), _run(100, 190, 31), _run(105, 205, 29)],
        "vllm-default": [_run(20, 900, 30), _run(19, 950, 30), _run(21, 990, 30)],
    }
    agg = aggregate(results["llm-serve"])
    assert agg["c16"]["output_tokens_per_s"]["median"] == 100
    assert (agg["c16"]["output_tokens_per_s"]["min"], agg["c16"]["output_tokens_per_s"]["max"]) == (90, 120)
    assert agg["startup"]["first_answer_s"]["median"] == 50

    args = argparse.Namespace(rounds=3, orders=[["a"], ["b"], ["c"]], max_tokens=64, rate_requests=48, rate=2.0)
    report = build_report(results, args, "cmd")
    assert report["runs"] == 3
    fair = report["metrics"]["output_tokens_per_s@c16/vs-vllm-same-args"]
    assert (fair["value"], fair["baseline_value"], fair["ratio"]) == (100, 100, 1.0)
    assert report["metrics"]["output_tokens_per_s@c16/vs-vllm-default"]["ratio"] == 5.0
    added = report["metrics"]["ttft_p50_ms_added@c16/vs-vllm-same-args"]["value"]
    assert added == 10  # 210 against 200
    ttft_target = next(t for t in report["targets"] if t["target"].startswith("TTFT"))
    assert ttft_target["met"] is True and ttft_target["load"] == "c16"
    assert "c16" in report["spread"]["llm-serve"]


def test_load_test_markdown_quotes_the_report() -> None:
    from benchmarks.load_test import markdown

    results = {
        "llm-serve": [_run(100, 210, 60), _run(90, 230, 40), _run(120, 200, 50)],
        "vllm-same-args": [_run(95, 200, 30), _run(100, 190, 31), _run(105, 205, 29)],
        "vllm-default": [_run(20, 900, 30), _run(19, 950, 30), _run(21, 990, 30)],
    }
    args = argparse.Namespace(rounds=3, orders=[["a"], ["b"], ["c"]], max_tokens=64, rate_requests=48, rate=2.0)
    table = markdown(build_report(results, args, "cmd"))
    assert "| c16 | 100.0 (90.0-120.0) | 100.0 (95.0-105.0) | 1.00 | 210 / 200 | +10 met |" in table
    assert "| c16 against vllm-default | 100.0 | vllm-default: 20.0 | 5.00 | | |" in table


def test_provider_overhead_reports_added_latency_as_medians_over_rounds() -> None:
    from benchmarks.provider_overhead import build_report

    def round_(added: float) -> dict[str, float]:
        out = {}
        for kind in ("e2e", "ttft"):
            for q in ("p50", "p99"):
                out[f"{kind}_{q}_ms/direct"] = 100.0
                out[f"{kind}_{q}_ms/llm-serve"] = 100.0 + added
                out[f"added_{kind}_{q}_ms"] = added
        return out

    args = argparse.Namespace(pairs=10, max_tokens=16)
    report = build_report([round_(5.0), round_(9.0), round_(7.0)], args, "python benchmarks/provider_overhead.py")
    assert report["runs"] == 3 and report["scenario"] == "provider-overhead"
    assert report["metrics"]["added_e2e_p50_ms@c1"]["value"] == 7.0
    versus = report["metrics"]["ttft_p99_ms@c1/vs-vllm-direct"]
    assert versus["baseline"] == "vllm-direct" and versus["ratio"] == 1.07
