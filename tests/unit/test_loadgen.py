"""The load generator's arithmetic: vLLM-bench metric definitions, arrival processes, workloads."""

from __future__ import annotations

import asyncio
import json
import socket
import statistics
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import StreamingResponse

from benchmarks.loadgen import Record, arrival_gaps, main, parse_slos, request_body, summarize
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


# ---- the command line against a stand-in streaming server ---------------------------------------


@pytest.fixture(scope="module")
def sse_server() -> Iterator[str]:
    """A tiny OpenAI-style streaming endpoint: `max_tokens` content chunks, then usage, then [DONE]."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> StreamingResponse:
        body = await request.json()
        if request.headers.get("authorization") != "Bearer sk-test":
            return StreamingResponse(iter([b""]), status_code=401)

        async def events() -> AsyncIterator[str]:
            head = {"id": "c", "object": "chat.completion.chunk", "model": body["model"]}
            for i in range(body["max_tokens"]):
                await asyncio.sleep(0.001)
                yield "data: " + json.dumps({**head, "choices": [{"index": 0, "delta": {"content": f"t{i}"}}]}) + "\n\n"
            usage = {
                "prompt_tokens": 7,
                "completion_tokens": body["max_tokens"],
                "total_tokens": 7 + body["max_tokens"],
            }
            yield "data: " + json.dumps({**head, "choices": [], "usage": usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(5)


def test_command_line_runs_levels_and_writes_json_and_plot(sse_server: str, tmp_path: Path) -> None:
    out = tmp_path / "run.json"
    args = ["--url", sse_server, "--api-key", "sk-test", "--output-len", "8", "--warmup", "2", "--num-requests", "12"]
    assert (
        main([*args, "--concurrency", "1", "4", "--request-rate", "50", "--goodput", "ttft:1000", "--out", str(out)])
        == 0
    )
    levels = json.loads(out.read_text())["levels"]
    assert [lv["summary"]["level"] for lv in levels] == ["c=1", "c=4", "rate=50.0/s"]
    for level in levels:
        s = level["summary"]
        assert s["completed"] == 12 and s["errors"] == 0 and s["output_tokens"] == 96
        assert s["goodput_requests_per_s"] > 0 and s["ttft_ms_p50"] > 0
        assert all(len(r["itl_s"]) == 7 for r in level["records"])  # 8 content chunks: 7 gaps
    assert out.with_suffix(".png").stat().st_size > 0
