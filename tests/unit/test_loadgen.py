"""The load generator's arithmetic: vLLM-bench metric definitions, arrival processes, workloads."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.loadgen import Record, arrival_gaps, parse_slos, request_body, summarize
from benchmarks.workloads import build_workload


def test_summary_follows_vllm_bench_definitions() -> None:
    records = [
        Record(ok=True, ttft_s=0.1, e2e_s=1.1, itl_s=[0.5, 0.5], prompt_tokens=10, output_tokens=11),
        Record(ok=True, ttft_s=0.3, e2e_s=2.3, itl_s=[1.0, 1.0], prompt_tokens=20, output_tokens=5),
        Record(ok=False, error="HTTP 500"),
    ]
    s = summarize(records, wall=4.0, slos={"ttft": 200, "tpot": 200})
    assert s["completed"] == 2 and s["errors"] == 1
    assert s["requests_per_s"] == 0.5 and s["output_tokens_per_s"] == 4.0 and s["total_tokens_per_s"] == 11.5
    # TPOT per request: (E2EL - TTFT) / (output tokens - 1): 100 ms and 500 ms.
    assert s["tpot_ms_mean"] == pytest.approx(300.0) and s["tpot_ms_p50"] == pytest.approx(300.0)
    assert s["ttft_ms_p50"] == pytest.approx(200.0) and s["itl_ms_p50"] == pytest.approx(750.0)
    # Goodput: only the first request meets TTFT <= 200 ms and TPOT <= 200 ms.
    assert s["goodput_requests_per_s"] == 0.25 and s["slo_attainment"] == pytest.approx(1 / 3)
    assert s["first_errors"] == ["HTTP 500"]


def test_arrivals_poisson_and_bursty_have_the_asked_rate() -> None:
    poisson = arrival_gaps(20000, rate=4.0, burstiness=1.0, seed=1)
    bursty = arrival_gaps(20000, rate=4.0, burstiness=0.25, seed=1)
    for gaps in (poisson, bursty):
        assert statistics.fmean(gaps) == pytest.approx(0.25, rel=0.05)
    cv = [statistics.pstdev(g) / statistics.fmean(g) for g in (poisson, bursty)]
    assert cv[0] == pytest.approx(1.0, rel=0.05)  # exponential gaps
    assert cv[1] == pytest.approx(2.0, rel=0.1)  # gamma shape 0.25: CV = 1/sqrt(0.25)
    assert arrival_gaps(3, rate=float("inf"), burstiness=1.0, seed=0) == [0.0, 0.0, 0.0]


def test_workloads() -> None:
    synthetic = build_workload("synthetic", 50, input_len=64, max_tokens=32, range_ratio=0.5, seed=3)
    words = [len(s.messages[0]["content"].split()) for s in synthetic]
    assert len({s.messages[0]["content"] for s in synthetic}) == 50
    assert min(words) >= 32 and max(words) <= 100 and all(16 <= s.max_tokens <= 48 for s in synthetic)
    conv = build_workload("conversations", 41)
    assert max(len(s.messages) for s in conv) == 8  # system + 3 earlier turns (user, assistant) + this user turn
    assert all(s.messages[-1]["role"] == "user" for s in conv)
    repeated = build_workload("repeated", 96, seed=4)
    assert len({str(s.messages) for s in repeated}) == 48 and all(s.temperature == 0 for s in repeated)
    rag = build_workload("rag", 4, collection="kb")
    assert request_body("m", rag[0])["rag"] == {"collection": "kb"} and "ignore_eos" not in request_body("m", rag[0])
    assert request_body("m", synthetic[0])["ignore_eos"] is True


def test_bad_slo_is_refused() -> None:
    assert parse_slos(["ttft:500", "tpot:50"]) == {"ttft": 500.0, "tpot": 50.0}
    with pytest.raises(SystemExit):
        parse_slos(["latency:5"])
