"""What a running batch costs interactive traffic: interactive latency with a batch running against without.

One llm-serve stack. Interactive traffic is an open-loop Poisson stream of streamed chat requests (so
there are gaps between them, which is where the batch runner works: it starts a line only while no
interactive request is in flight on the replica). Each round measures the stream twice on the same warm
engine, once alone and once while a large chat batch runs through /v1/batches (cancelled at the end of
the measurement), in alternating order. Medians over the rounds of each mode's p50 and p99 are compared;
target: p99 with a batch at most 1.10x without. The batch's own progress (lines answered per second of
the measurement) says what the gaps were worth.

    python benchmarks/batch_interference.py [--rounds 3] [--rate 0.5] [--requests 40] [--batch-lines 400]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.loadgen import run_rate, summarize
from benchmarks.report import RESULTS, machine, metric, write_report
from benchmarks.stack import BenchStack
from benchmarks.workloads import build_workload

SCENARIO = "batch-interference"
MODES = ("alone", "with-batch")


def batch_file(model: str, lines: int, max_tokens: int) -> io.BytesIO:
    rows = [
        {
            "custom_id": f"b-{i}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": model,
                "messages": [{"role": "user", "content": f"Write a sentence about the number {i}."}],
                "max_tokens": max_tokens,
                "temperature": 0.8,
                "cache": False,
            },
        }
        for i in range(lines)
    ]
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in rows).encode())


def start_batch(client: Any, model: str, args: argparse.Namespace) -> str:
    uploaded = client.files.create(
        file=("bench.jsonl", batch_file(model, args.batch_lines, args.max_tokens)), purpose="batch"
    )
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 1:  # running, not just created
        assert time.monotonic() < deadline, "the batch did not start"
        time.sleep(0.5)
    return batch.id


def stop_batch(client: Any, batch_id: str) -> int:
    client.batches.cancel(batch_id)
    while (batch := client.batches.retrieve(batch_id)).status != "cancelled":
        time.sleep(0.5)
    return batch.request_counts.completed


def measure(stack: BenchStack, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    specs = build_workload("synthetic", args.requests, max_tokens=args.max_tokens, seed=seed)
    records, wall = asyncio.run(
        run_rate(stack.url, stack.model, specs, args.rate, seed=seed, label="interactive", progress=False)
    )
    return summarize(records, wall)


def rounds(stack: BenchStack, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    import openai

    client = openai.OpenAI(base_url=stack.url + "/v1", api_key="unused", timeout=120, max_retries=0)
    measure(stack, argparse.Namespace(**{**vars(args), "requests": 6}), 999)  # warm the engine
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    for i in range(args.rounds):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            seed = 100 + i  # the same arrivals and prompts for both modes of a round
            if mode == "alone":
                result = measure(stack, args, seed)
            else:
                batch_id = start_batch(client, stack.model, args)
                before = client.batches.retrieve(batch_id).request_counts.completed
                result = measure(stack, args, seed)
                answered = stop_batch(client, batch_id) - before
                result["batch_lines_per_s"] = answered / result["duration_s"]
            runs[mode].append(result)
            print(
                f"round {i + 1} {mode:10} e2e p50 {result['e2el_ms_p50']:.0f} ms p99 {result['e2el_ms_p99']:.0f} ms  "
                f"ttft p99 {result['ttft_ms_p99']:.0f} ms  errors {result['errors']}"
                + (f"  batch {result['batch_lines_per_s']:.2f} lines/s" if "batch_lines_per_s" in result else ""),
                flush=True,
            )
    return runs


def build_report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, command: str) -> dict[str, Any]:
    def med(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    load = f"poisson{args.rate}"
    metrics = {}
    for key, unit in (("e2el_ms_p99", "ms"), ("e2el_ms_p50", "ms"), ("ttft_ms_p99", "ms"), ("ttft_ms_p50", "ms")):
        metrics[f"interactive_{key}@{load}"] = metric(
            med("with-batch", key), unit, False, "no-batch", med("alone", key)
        )
    metrics[f"batch_lines_per_s@{load}"] = metric(med("with-batch", "batch_lines_per_s"), "lines/s", True)
    spread = {m: [round(r["e2el_ms_p99"]) for r in rs] for m, rs in runs.items()}
    return {
        "scenario": SCENARIO,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": command,
        "runs": args.rounds,
        "metrics": metrics,
        "notes": (
            f"{args.rounds} rounds, each measuring {args.requests} streamed chat requests arriving as a Poisson "
            f"stream at {args.rate}/s ({args.max_tokens} output tokens, ignore_eos) alone and with a "
            f"{args.batch_lines}-line chat batch running (batch defaults: 2 lines at once, only while no interactive "
            f"request is in flight), in alternating order; medians of the rounds. Target: interactive p99 with a "
            f"batch <= 1.10x without. Per-round e2e p99 (ms): {spread}."
        ),
        "raw": runs,
    }


def plot(runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for mode, marker in zip(MODES, ("o", "s"), strict=True):
        for q, style in ((50, "-"), (99, "--")):
            values = [r[f"e2el_ms_p{q}"] for r in runs[mode]]
            ax.plot(range(1, len(values) + 1), values, style, marker=marker, label=f"{mode} p{q}")
    ax.set_xlabel("round")
    ax.set_ylabel("interactive end-to-end latency (ms)")
    ax.set_title("Interactive latency with and without a batch running")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", type=float, default=0.5, help="interactive requests per second (Poisson)")
    parser.add_argument("--requests", type=int, default=40, help="interactive requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch-lines", type=int, default=400)
    args = parser.parse_args(argv)
    command = "python benchmarks/batch_interference.py " + " ".join(argv if argv is not None else sys.argv[1:])
    stack = BenchStack({**os.environ})
    try:
        print("starting the stack (about 3 minutes)...", flush=True)
        stack.start()
        runs = rounds(stack, args)
    finally:
        stack.stop()
    path = write_report(build_report(runs, args, command.strip()))
    plot(runs, RESULTS / f"{SCENARIO}.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
