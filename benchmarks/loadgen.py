"""A small async OpenAI-API load generator: fixed concurrency, streaming, per-request timings.

Metric definitions follow `vllm bench serve`: TTFT is the time to the first content token; TPOT is
(E2E - TTFT) / (output tokens - 1) per request; ITL are the gaps between streamed content chunks;
output throughput is the sum of output tokens (as the server's `usage` reports) over the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.report import percentile

DEFAULT_PROMPTS = [
    "Write a short story about a lighthouse keeper.",
    "Explain how a refrigerator works.",
    "List some tips for learning a new language.",
    "Describe the water cycle to a child.",
    "What are the benefits of regular exercise?",
    "Summarize the plot of a heist movie you invent.",
    "Give advice for a first job interview.",
    "Explain what a neural network is.",
]


@dataclass
class Record:
    ok: bool
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


async def one_request(client: httpx.AsyncClient, url: str, model: str, prompt: str, max_tokens: int) -> Record:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "stream": True,
        "stream_options": {"include_usage": True},
        # Every request produces exactly max_tokens, so runs compare like with like.
        "ignore_eos": True,
    }
    start = time.perf_counter()
    record = Record(ok=False)
    last = None
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return record
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("usage"):
                    record.prompt_tokens = chunk["usage"]["prompt_tokens"]
                    record.output_tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and choices[0].get("delta", {}).get("content"):
                    now = time.perf_counter()
                    if last is None:
                        record.ttft_s = now - start
                    else:
                        record.itl_s.append(now - last)
                    last = now
        record.e2e_s = time.perf_counter() - start
        record.ok = record.output_tokens > 0
        if not record.ok:
            record.error = "no usage in stream"
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


async def run_level(url: str, model: str, concurrency: int, num_requests: int, max_tokens: int) -> dict[str, Any]:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(num_requests):
            queue.put_nowait(i)
        records: list[Record] = []

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                records.append(
                    await one_request(client, url, model, DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)], max_tokens)
                )
                print(f"\r  c={concurrency}: {len(records)}/{num_requests}", end="", file=sys.stderr, flush=True)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
        print(file=sys.stderr)
    return summarize(records, wall, concurrency)


def summarize(records: list[Record], wall: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    ttft = [r.ttft_s * 1000 for r in ok]
    tpot = [r.tpot_s * 1000 for r in ok if r.tpot_s is not None]
    itl = [x * 1000 for r in ok for x in r.itl_s]
    e2e = [r.e2e_s * 1000 for r in ok]
    out = {
        "concurrency": concurrency,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "wall_s": wall,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / wall if wall else 0.0,
        "requests_per_s": len(ok) / wall if wall else 0.0,
    }
    for name, values in (("ttft_ms", ttft), ("tpot_ms", tpot), ("itl_ms", itl), ("e2el_ms", e2e)):
        out[f"{name}_mean"] = statistics.fmean(values) if values else None
        for q in (50, 90, 95, 99):
            out[f"{name}_p{q}"] = percentile(values, q)
    out["first_errors"] = [r.error for r in records if not r.ok][:3]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: 4x concurrency, at least 8")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", help="write the summaries as JSON here")
    args = parser.parse_args(argv)

    async def _all() -> list[dict[str, Any]]:
        if args.warmup:
            await run_level(args.url, args.model, 1, args.warmup, 8)
        results = []
        for c in args.concurrency:
            n = args.requests_per_level or max(8, 4 * c)
            results.append(await run_level(args.url, args.model, c, n, args.max_tokens))
        return results

    results = asyncio.run(_all())
    for r in results:
        print(
            f"c={r['concurrency']:3d}  out tok/s {r['output_tokens_per_s']:7.1f}  ttft p50 {r['ttft_ms_p50']:.0f} ms"
            f"  tpot p50 {r['tpot_ms_p50']:.1f} ms  errors {r['errors']}"
        )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
