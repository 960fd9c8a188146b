"""What a provider pool adds: the same upstream called directly, and through llm-serve as an API pool.

The upstream is vLLM's own OpenAI server with the bench config's model and engine arguments. llm-serve
runs the bench stack with one model, an API pool (`provider: openai_compatible`) in front of that
server, and no engine of its own, so the only difference between the two paths is llm-serve's: the
Serve proxy, the router's stages (auth, limits, admission with its reservation, cache lookup with the
cache bypassed, the ledger row, pricing) and the second HTTP hop. Requests are sent in pairs, one
direct and one through llm-serve, in alternating order, one at a time (added latency, not
throughput, is the question), each round on the same warm upstream. Reported per round and as
medians over rounds: p50 and p99 of end-to-end latency (non-streamed) and of time to first token
(streamed), for both paths, and the added latency at p50 and p99. Outputs are fixed-length
(`ignore_eos`, passed upstream through the pool's `pass_params`) so both paths generate the same work.

    python benchmarks/provider_overhead.py [--rounds 3] [--pairs 60] [--max-tokens 16]
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

import httpx

from benchmarks.report import RESULTS, machine, metric, percentile, write_report
from benchmarks.servers import VllmServer, bench_config, bench_env
from benchmarks.stack import BenchStack
from llm_serve.models import resolve_model_source

SCENARIO = "provider-overhead"
POOL = "vllm-upstream"
PATHS = ("direct", "llm-serve")
CONTENT = re.compile(r'"content":\s*"[^"]')  # a chunk that carries text (the role chunk's content is "")


def patch_for(upstream_url: str, upstream_model: str) -> Any:
    def patch(data: dict[str, Any]) -> None:
        data["models"] = [
            {
                "id": POOL,
                "provider": {
                    "kind": "openai_compatible",
                    "base_url": f"{upstream_url}/v1",
                    "model": upstream_model,
                    "pass_params": ["ignore_eos"],
                    "continuous_usage": True,
                },
                "price": {"input_per_1m": 1.0, "output_per_1m": 2.0},
            }
        ]
        data["embedding_models"] = []
        data.setdefault("cache", {})["semantic"] = {"enabled": False}

    return patch


def one(http: httpx.Client, url: str, model: str, args: argparse.Namespace, i: int, stream: bool) -> float:
    """Seconds to the answer (non-streamed) or to the first content token (streamed)."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": f"Count from {i} onwards, one number per line."}],
        "max_tokens": args.max_tokens,
        "temperature": 0.7,
        "ignore_eos": True,
    }
    if url.endswith(str(args.llm_serve_port)):
        body["cache"] = False
    started = time.perf_counter()
    if not stream:
        resp = http.post(f"{url}/v1/chat/completions", json=body)
        resp.raise_for_status()
        return time.perf_counter() - started
    with http.stream("POST", f"{url}/v1/chat/completions", json={**body, "stream": True}) as resp:
        resp.raise_for_status()
        first = None
        for line in resp.iter_lines():
            if first is None and CONTENT.search(line):
                first = time.perf_counter() - started
        return first if first is not None else time.perf_counter() - started


def measure_round(urls: dict[str, tuple[str, str]], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {p: {"e2e": [], "ttft": []} for p in PATHS}
    with httpx.Client(timeout=300) as http:
        for path in PATHS:  # warm both paths (connections, the router's tokenizer) before timing
            for stream in (False, True):
                one(http, *urls[path], args, -1, stream)
        for i in range(args.pairs):
            order = PATHS if (i + seed) % 2 == 0 else PATHS[::-1]
            for kind, stream in (("e2e", False), ("ttft", True)):
                for path in order:
                    samples[path][kind].append(one(http, *urls[path], args, i, stream))
            if (i + 1) % 20 == 0:
                print(f"  round {seed + 1}: {i + 1}/{args.pairs} pairs", flush=True)
    out: dict[str, Any] = {}
    for path in PATHS:
        for kind in ("e2e", "ttft"):
            values = samples[path][kind]
            out[f"{kind}_p50_ms/{path}"] = 1000 * (percentile(values, 50) or 0.0)
            out[f"{kind}_p99_ms/{path}"] = 1000 * (percentile(values, 99) or 0.0)
    for kind in ("e2e", "ttft"):
        for q in ("p50", "p99"):
            out[f"added_{kind}_{q}_ms"] = out[f"{kind}_{q}_ms/llm-serve"] - out[f"{kind}_{q}_ms/direct"]
    return out


def build_report(rounds: list[dict[str, Any]], args: argparse.Namespace, command: str) -> dict[str, Any]:
    def med(key: str) -> float:
        return statistics.median(r[key] for r in rounds)

    metrics: dict[str, Any] = {}
    for kind in ("e2e", "ttft"):
        for q in ("p50", "p99"):
            metrics[f"{kind}_{q}_ms@c1/vs-vllm-direct"] = metric(
                med(f"{kind}_{q}_ms/llm-serve"), "ms", False, "vllm-direct", med(f"{kind}_{q}_ms/direct")
            )
            metrics[f"added_{kind}_{q}_ms@c1"] = metric(med(f"added_{kind}_{q}_ms"), "ms", False)
    spread = {k: [round(r[k], 1) for r in rounds] for k in rounds[0] if k.startswith("added_")}
    return {
        "scenario": SCENARIO,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": command,
        "runs": len(rounds),
        "metrics": metrics,
        "rounds": rounds,
        "notes": (
            f"{args.pairs} request pairs per round (direct and through llm-serve, alternating which goes first), "
            f"one at a time, {args.max_tokens} output tokens each (ignore_eos), non-streamed (e2e) and streamed "
            f"(ttft); medians over {len(rounds)} rounds on one warm upstream (vLLM's server, the bench config's "
            f"engine arguments). Added latency per round: {spread}. llm-serve's path: Serve proxy, router stages "
            "with the cache bypassed, ledger, pricing, and a second HTTP hop to the upstream on 127.0.0.1."
        ),
    }


def plot(rounds: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
    for ax, kind, title in ((axes[0], "e2e", "end to end (16 tokens)"), (axes[1], "ttft", "time to first token")):
        labels = [f"{q} {p}" for q in ("p50", "p99") for p in PATHS]
        values = [statistics.median(r[f"{kind}_{q}_ms/{p}"] for r in rounds) for q in ("p50", "p99") for p in PATHS]
        ax.bar(labels, values, color=["#888", "#3a7", "#888", "#3a7"])
        ax.set_title(title)
        ax.set_ylabel("ms")
        ax.tick_params(axis="x", rotation=30)
    fig.suptitle(f"provider pool vs direct upstream (medians of {len(rounds)} rounds)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    args = parser.parse_args()
    env = bench_env()
    config = bench_config()
    model_dir = str(resolve_model_source(config.models[0].source, config.home_path, pull=True))
    upstream = VllmServer(env, model_dir, config)
    print("starting vLLM's server (the upstream)", flush=True)
    upstream.start()
    stack = BenchStack(env, patch_for(upstream.url, upstream.model))
    args.llm_serve_port = stack.config.server.port
    try:
        print("starting llm-serve with the upstream as its only pool (an API pool; no engine)", flush=True)
        stack.start()
        urls = {"direct": (upstream.url, upstream.model), "llm-serve": (stack.url, POOL)}
        rounds = []
        for seed in range(args.rounds):
            rounds.append(measure_round(urls, args, seed))
            print(f"round {seed + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in rounds[-1].items()), flush=True)
    finally:
        stack.stop()
        upstream.stop()
    command = "python benchmarks/provider_overhead.py " + " ".join(sys.argv[1:])
    write_report(build_report(rounds, args, command.strip()))
    plot(rounds, RESULTS / f"{SCENARIO}.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
