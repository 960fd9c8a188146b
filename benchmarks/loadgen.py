"""An async load generator for OpenAI-compatible endpoints, with `vllm bench serve`'s metric definitions.

Two ways to offer load: a closed loop at a fixed concurrency (each of N clients sends its next request
when the last one finished), or an open loop at a request rate with Poisson arrivals, or gamma arrivals
for burstiness < 1 (exactly as `vllm bench serve --request-rate R --burstiness B`), optionally capped at
a maximum concurrency. Requests come from a workload (benchmarks/workloads.py): synthetic lengths,
multi-turn conversations, RAG questions, a repeated set for caches.

Per request it records TTFT (to the first chunk with content), every inter-chunk gap (ITL), E2EL, and
input and output tokens as the server's `usage` reports them. Summaries follow vLLM's definitions:
TPOT is (E2EL - TTFT) / (output tokens - 1) per request; request, output and total token throughput
are over the benchmark's wall time; goodput counts the requests that meet every given SLO.
When one client process is the bottleneck, `--processes N` spreads the load over N Ray tasks.

    python benchmarks/loadgen.py --url http://127.0.0.1:8000 --model smollm2-135m-instruct \\
        --workload synthetic --concurrency 1 4 16 --out results.json
    python benchmarks/loadgen.py --url ... --workload conversations --request-rate 2 --burstiness 0.5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.report import percentile
from benchmarks.workloads import WORKLOADS, RequestSpec, build_workload

PERCENTILES = (50, 90, 95, 99)
PROGRESS_EVERY_S = 0.5
HTTP_TIMEOUT_S = 600.0


@dataclass
class Record:
    ok: bool
    tag: str = ""
    start_s: float = 0.0  # wall clock (time.time), so records from several processes line up
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itl_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    status: int = 0
    error: str | None = None

    @property
    def tpot_s(self) -> float | None:
        if self.output_tokens <= 1:
            return None
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


class Progress:
    """One status line on stderr: done/total, errors, elapsed, output tokens/s so far."""

    def __init__(self, label: str, total: int, enabled: bool = True) -> None:
        self.label, self.total, self.enabled = label, total, enabled
        self.done = self.errors = self.tokens = 0
        self.started = time.perf_counter()
        self._shown = 0.0

    def add(self, record: Record) -> None:
        self.done += 1
        self.errors += 0 if record.ok else 1
        self.tokens += record.output_tokens
        now = time.perf_counter()
        if self.enabled and (now - self._shown > PROGRESS_EVERY_S or self.done == self.total):
            self._shown = now
            elapsed = now - self.started
            print(
                f"\r  {self.label}: {self.done}/{self.total} requests, {self.errors} errors, {elapsed:5.1f} s, "
                f"{self.tokens / max(elapsed, 1e-9):6.1f} out tok/s",
                end="\n" if self.done == self.total else "",
                file=sys.stderr,
                flush=True,
            )


def request_body(model: str, spec: RequestSpec) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": spec.messages,
        "max_tokens": spec.max_tokens,
        "temperature": spec.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if spec.ignore_eos:
        body["ignore_eos"] = True  # every request produces exactly max_tokens: runs compare like with like
    body.update(spec.extra)
    return body


async def one_request(
    client: httpx.AsyncClient, url: str, model: str, spec: RequestSpec, headers: dict[str, str] | None = None
) -> Record:
    record = Record(ok=False, tag=spec.tag, start_s=time.time())
    start = time.perf_counter()
    last = None
    try:
        async with client.stream(
            "POST", f"{url}/v1/chat/completions", json=request_body(model, spec), headers=headers
        ) as resp:
            record.status = resp.status_code
            if resp.status_code != 200:
                record.error = f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}"
                return record
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if chunk.get("error"):
                    record.error = str(chunk["error"])[:200]
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
        record.ok = record.output_tokens > 0 and record.error is None
        if record.output_tokens == 0 and record.error is None:
            record.error = "no usage in stream"
    except (httpx.HTTPError, json.JSONDecodeError) as exc:
        record.error = f"{type(exc).__name__}: {exc}"
    return record


def _client(concurrency: int) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    return httpx.AsyncClient(timeout=httpx.Timeout(HTTP_TIMEOUT_S), limits=limits)


async def run_concurrency(
    url: str,
    model: str,
    specs: list[RequestSpec],
    concurrency: int,
    *,
    label: str = "",
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> tuple[list[Record], float]:
    """Closed loop: `concurrency` clients, each sending its next request when its last one ends."""
    queue: asyncio.Queue[RequestSpec] = asyncio.Queue()
    for spec in specs:
        queue.put_nowait(spec)
    records: list[Record] = []
    bar = Progress(label or f"c={concurrency}", len(specs), progress)
    async with _client(concurrency) as client:

        async def worker() -> None:
            while True:
                try:
                    spec = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                record = await one_request(client, url, model, spec, headers)
                records.append(record)
                bar.add(record)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
        wall = time.perf_counter() - start
    return records, wall


def arrival_gaps(n: int, rate: float, burstiness: float, seed: int) -> list[float]:
    """Gaps between request sends: gamma(shape=burstiness, scale=1/(rate*burstiness)), mean 1/rate.

    burstiness 1 is a Poisson process; below 1 arrivals bunch up, above 1 they even out (vLLM's rule).
    """
    if rate == float("inf"):
        return [0.0] * n
    rng = random.Random(seed)
    return [rng.gammavariate(burstiness, 1.0 / (rate * burstiness)) for _ in range(n)]


async def run_rate(
    url: str,
    model: str,
    specs: list[RequestSpec],
    rate: float,
    *,
    burstiness: float = 1.0,
    max_concurrency: int | None = None,
    seed: int = 0,
    label: str = "",
    progress: bool = True,
    headers: dict[str, str] | None = None,
) -> tuple[list[Record], float]:
    """Open loop: requests sent on a (Poisson or gamma) schedule whether or not earlier ones finished."""
    records: list[Record] = []
    bar = Progress(label or f"rate={rate}/s", len(specs), progress)
    limit = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    async with _client(max_concurrency or len(specs)) as client:

        async def send(spec: RequestSpec) -> None:
            if limit is None:
                record = await one_request(client, url, model, spec, headers)
            else:
                async with limit:
                    record = await one_request(client, url, model, spec, headers)
            records.append(record)
            bar.add(record)

        start = time.perf_counter()
        tasks = []
        for spec, gap in zip(specs, arrival_gaps(len(specs), rate, burstiness, seed), strict=True):
            tasks.append(asyncio.create_task(send(spec)))
            await asyncio.sleep(gap)
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return records, wall


# ---- several client processes ---------------------------------------------------------------------


def _shard_worker(kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    specs = [RequestSpec(**s) for s in kwargs.pop("specs")]
    mode = kwargs.pop("mode")
    if mode == "rate":
        records, _ = asyncio.run(run_rate(kwargs.pop("url"), kwargs.pop("model"), specs, **kwargs))
    else:
        records, _ = asyncio.run(run_concurrency(kwargs.pop("url"), kwargs.pop("model"), specs, **kwargs))
    return [asdict(r) for r in records]


def run_processes(
    processes: int, mode: str, url: str, model: str, specs: list[RequestSpec], **kwargs: Any
) -> tuple[list[Record], float]:
    """The same load spread over `processes` Ray tasks (each its own event loop and connections).

    Concurrency and rate are divided among them; wall time is from the first send to the last
    response across all of them (records carry wall-clock start times).
    """
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=processes, include_dashboard=False, log_to_driver=False)
    task = ray.remote(num_cpus=1)(_shard_worker)
    shards = []
    for i in range(processes):
        share = dict(kwargs, specs=[asdict(s) for s in specs[i::processes]], mode=mode, url=url, model=model)
        share["progress"] = i == 0
        share["label"] = f"{kwargs.get('label', mode)} (process 1 of {processes})"
        if mode == "rate":
            share["rate"] = kwargs["rate"] / processes
            share["seed"] = kwargs.get("seed", 0) + i
            if kwargs.get("max_concurrency"):
                share["max_concurrency"] = max(1, kwargs["max_concurrency"] // processes)
        else:
            share["concurrency"] = max(1, kwargs["concurrency"] // processes)
        shards.append(task.remote(share))
    records = [Record(**r) for shard in ray.get(shards) for r in shard]
    wall = max(r.start_s + r.e2e_s for r in records) - min(r.start_s for r in records) if records else 0.0
    return records, wall


# ---- summaries ------------------------------------------------------------------------------------


def parse_slos(items: list[str] | None) -> dict[str, float]:
    """`ttft:500 tpot:50 e2el:4000` (milliseconds), as `vllm bench serve --goodput`."""
    slos: dict[str, float] = {}
    for item in items or []:
        name, sep, value = item.partition(":")
        if not sep or name not in ("ttft", "tpot", "e2el"):
            raise SystemExit(f"bad SLO {item!r}: expected ttft:MS, tpot:MS or e2el:MS")
        slos[name] = float(value)
    return slos


def _meets(record: Record, slos: dict[str, float]) -> bool:
    values = {"ttft": record.ttft_s * 1000, "tpot": (record.tpot_s or 0.0) * 1000, "e2el": record.e2e_s * 1000}
    return all(values[name] <= limit for name, limit in slos.items())


def summarize(records: list[Record], wall: float, slos: dict[str, float] | None = None) -> dict[str, Any]:
    ok = [r for r in records if r.ok]
    series = {
        "ttft_ms": [r.ttft_s * 1000 for r in ok],
        "tpot_ms": [r.tpot_s * 1000 for r in ok if r.tpot_s is not None],
        "itl_ms": [x * 1000 for r in ok for x in r.itl_s],
        "e2el_ms": [r.e2e_s * 1000 for r in ok],
    }
    out: dict[str, Any] = {
        "requests": len(records),
        "completed": len(ok),
        "errors": len(records) - len(ok),
        "duration_s": wall,
        "input_tokens": sum(r.prompt_tokens for r in ok),
        "output_tokens": sum(r.output_tokens for r in ok),
        "requests_per_s": len(ok) / wall if wall else 0.0,
        "output_tokens_per_s": sum(r.output_tokens for r in ok) / wall if wall else 0.0,
        "total_tokens_per_s": sum(r.output_tokens + r.prompt_tokens for r in ok) / wall if wall else 0.0,
    }
    for name, values in series.items():
        out[f"{name}_mean"] = statistics.fmean(values) if values else None
        for q in PERCENTILES:
            out[f"{name}_p{q}"] = percentile(values, q)
    if slos:
        good = [r for r in ok if _meets(r, slos)]
        out["slos_ms"] = slos
        out["goodput_requests_per_s"] = len(good) / wall if wall else 0.0
        out["slo_attainment"] = len(good) / len(records) if records else 0.0
    out["first_errors"] = [r.error for r in records if not r.ok][:3]
    return out


def line(name: str, s: dict[str, Any]) -> str:
    def ms(key: str) -> str:
        value = s.get(key)
        return "-" if value is None else f"{value:.0f}"

    good = f"  goodput {s['goodput_requests_per_s']:.2f} req/s" if "goodput_requests_per_s" in s else ""
    return (
        f"{name:28} {s['output_tokens_per_s']:7.1f} out tok/s  {s['requests_per_s']:5.2f} req/s  "
        f"TTFT p50/p99 {ms('ttft_ms_p50')}/{ms('ttft_ms_p99')} ms  TPOT p50/p99 {ms('tpot_ms_p50')}/"
        f"{ms('tpot_ms_p99')} ms  errors {s['errors']}{good}"
        + (f"  (first error: {s['first_errors'][0]})" if s["errors"] else "")
    )


async def run_level(url: str, model: str, concurrency: int, num_requests: int, max_tokens: int) -> dict[str, Any]:
    """A fixed-concurrency level of synthetic chat requests (for benchmarks that need just that)."""
    specs = build_workload("synthetic", num_requests, max_tokens=max_tokens, seed=concurrency)
    records, wall = await run_concurrency(url, model, specs, concurrency)
    return {"concurrency": concurrency, **summarize(records, wall)}


# ---- command line ---------------------------------------------------------------------------------


def plot(points: list[dict[str, Any]], out: Path, title: str) -> None:
    """Latency against throughput, one point per load level: where the knee is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    xs = [p["output_tokens_per_s"] for p in points]
    for ax, key, label in ((axes[0], "ttft_ms", "TTFT"), (axes[1], "e2el_ms", "E2E latency")):
        measured = [(x, p) for x, p in zip(xs, points, strict=True) if p[f"{key}_p50"] is not None]  # not all-errors
        for q, style in ((50, "o-"), (99, "s--")):
            ax.plot([x for x, _ in measured], [p[f"{key}_p{q}"] for _, p in measured], style, label=f"p{q}")
        for x, p in measured:
            ax.annotate(p["level"], (x, p[f"{key}_p50"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel("output tokens/s")
        ax.set_ylabel(f"{label} (ms)")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--api-key", help="sent as a bearer token")
    parser.add_argument("--workload", choices=sorted(WORKLOADS), default="synthetic")
    parser.add_argument("--num-requests", type=int, default=0, help="per level (default: 4x concurrency, at least 16)")
    parser.add_argument("--concurrency", type=int, nargs="*", default=[], help="closed-loop levels")
    parser.add_argument("--request-rate", type=float, nargs="*", default=[], help="open-loop levels (req/s)")
    parser.add_argument("--burstiness", type=float, default=1.0, help="1: Poisson; <1 burstier; >1 more even")
    parser.add_argument("--max-concurrency", type=int, help="cap on requests in flight for rate levels")
    parser.add_argument("--input-len", type=int, default=64, help="synthetic: mean input tokens")
    parser.add_argument("--output-len", type=int, default=64, help="synthetic: output tokens (ignore_eos)")
    parser.add_argument("--range-ratio", type=float, default=0.0, help="synthetic: lengths uniform in +-ratio")
    parser.add_argument("--collection", default="nimbus_manual", help="rag: the collection to retrieve from")
    parser.add_argument("--warmup", type=int, default=4, help="requests sent (and discarded) first")
    parser.add_argument("--goodput", nargs="*", help="SLOs in ms: ttft:500 tpot:50 e2el:4000")
    parser.add_argument("--processes", type=int, default=1, help="client processes (Ray tasks)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write summaries and per-request records (JSON) here, plus a PNG")
    args = parser.parse_args(argv)
    slos = parse_slos(args.goodput)
    headers = {"authorization": f"Bearer {args.api_key}"} if args.api_key else None
    levels = [("concurrency", c) for c in args.concurrency] + [("rate", r) for r in args.request_rate]
    if not levels:
        levels = [("concurrency", 1), ("concurrency", 16)]

    def specs_for(n: int, seed: int) -> list[RequestSpec]:
        return build_workload(
            args.workload,
            n,
            max_tokens=args.output_len,
            input_len=args.input_len,
            range_ratio=args.range_ratio,
            collection=args.collection,
            seed=seed,
        )

    if args.warmup:
        warm = specs_for(args.warmup, 10_000)
        asyncio.run(run_concurrency(args.url, args.model, warm, 2, label="warm-up", headers=headers))
    results = []
    for i, (mode, value) in enumerate(levels):
        n = args.num_requests or max(16, 4 * int(value if mode == "concurrency" else value * 4))
        specs = specs_for(n, args.seed + i)
        label = f"c={value}" if mode == "concurrency" else f"rate={value}/s"
        kwargs: dict[str, Any] = {"label": label, "headers": headers}
        if mode == "concurrency":
            kwargs["concurrency"] = int(value)
        else:
            kwargs.update(rate=value, burstiness=args.burstiness, max_concurrency=args.max_concurrency, seed=args.seed)
        if args.processes > 1:
            records, wall = run_processes(args.processes, mode, args.url, args.model, specs, **kwargs)
        elif mode == "concurrency":
            records, wall = asyncio.run(run_concurrency(args.url, args.model, specs, **kwargs))
        else:
            records, wall = asyncio.run(run_rate(args.url, args.model, specs, **kwargs))
        summary = {"level": label, "mode": mode, "value": value, **summarize(records, wall, slos)}
        print(line(label, summary), flush=True)
        results.append({"summary": summary, "records": [asdict(r) for r in records]})
    if args.out:
        out = Path(args.out)
        out.write_text(json.dumps({"args": vars(args), "levels": results}, indent=1) + "\n")
        plot([r["summary"] for r in results], out.with_suffix(".png"), f"{args.model} at {args.url} ({args.workload})")
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
