"""What llm-serve's serving path costs against vLLM's own OpenAI server, same model, same machine, one run.

Both servers are started by this script on ports of their own, one after the other (on 2 cores two
engines side by side would only measure contention), warmed up, then driven by the same load
generator at each concurrency. Start-up time to the first answer is measured too. Results go to
benchmarks/results/serving-overhead.json (the shape of ../shared/BENCHMARKS.md) with a plot.

    python benchmarks/serving_overhead.py --concurrency 1 16 --repeats 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.loadgen import run_level  # noqa: E402
from benchmarks.report import BENCH_CONFIG as CONFIG  # noqa: E402
from benchmarks.report import RESULTS, machine, metric, write_report  # noqa: E402
from benchmarks.stack import BenchStack  # noqa: E402
from llm_serve.config import load_config  # noqa: E402
from llm_serve.local_cluster import stop_tree  # noqa: E402
from llm_serve.models import resolve_model_source  # noqa: E402

BASELINE = "vllm-api-server"
VLLM_PORT = 8032
READY_TIMEOUT_S = 900


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def wait_ready(url: str, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/v1/models", timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s} s")


def first_answer(url: str, model: str) -> None:
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    req = urllib.request.Request(f"{url}/v1/chat/completions", data=body, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as resp:
        resp.read()


class VllmServer:
    name = "vllm-api-server"

    def __init__(self, env: dict[str, str], model_dir: str, model_id: str) -> None:
        self.url = f"http://127.0.0.1:{VLLM_PORT}"
        self.env = env
        self.model_dir, self.model_id = model_dir, model_id
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        engine = load_config(CONFIG).models[0].engine
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model_dir,
            "--served-model-name",
            self.model_id,
            "--host",
            "127.0.0.1",
            "--port",
            str(VLLM_PORT),
            "--dtype",
            engine.dtype,
            "--max-model-len",
            str(engine.max_model_len),
            "--max-num-seqs",
            str(engine.max_num_seqs),
            "--gpu-memory-utilization",
            str(engine.cpu_memory_utilization),
            "--seed",
            str(engine.seed),
        ]
        if engine.enable_prefix_caching:
            cmd.append("--enable-prefix-caching")
        env = {
            **self.env,
            "VLLM_CPU_KVCACHE_SPACE": str(engine.kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": engine.cpu_omp_threads_bind,
            "HF_HUB_OFFLINE": "1",
        }
        log = open(RESULTS / "raw" / "vllm-api-server.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_ready(self.url)

    def stop(self) -> None:
        if self.proc is not None:
            stop_tree(self.proc.pid)
            self.proc = None


def measure(server: Any, model: str, levels: list[int], requests: int, max_tokens: int) -> dict[str, Any]:
    _log(f"starting {server.name}")
    started = time.monotonic()
    server.start()
    first_answer(server.url, model)
    startup_s = time.monotonic() - started
    _log(f"{server.name} answered after {startup_s:.0f} s; warming up")
    try:
        asyncio.run(run_level(server.url, model, 4, 8, 16))
        results = {}
        for c in levels:
            n = requests or max(16, 4 * c)
            results[c] = asyncio.run(run_level(server.url, model, c, n, max_tokens))
            r = results[c]
            _log(
                f"{server.name} c={c}: {r['output_tokens_per_s']:.1f} tok/s, ttft p50 {r['ttft_ms_p50']:.0f} ms, "
                f"tpot p50 {r['tpot_ms_p50']:.1f} ms, errors {r['errors']}"
            )
    finally:
        server.stop()
    return {"startup_s": startup_s, "levels": results}


def _median(runs: list[dict[str, Any]], c: int, key: str) -> float:
    return statistics.median(run["levels"][c][key] for run in runs)


def build_report(ours: list[dict], base: list[dict], levels: list[int], command: str, repeats: int) -> dict:
    metrics: dict[str, Any] = {}
    for c in levels:
        for name, key, unit, higher in (
            ("output_tokens_per_s", "output_tokens_per_s", "tok/s", True),
            ("ttft_p50_ms", "ttft_ms_p50", "ms", False),
            ("ttft_p99_ms", "ttft_ms_p99", "ms", False),
            ("tpot_p50_ms", "tpot_ms_p50", "ms", False),
        ):
            metrics[f"{name}@c{c}"] = metric(_median(ours, c, key), unit, higher, BASELINE, _median(base, c, key))
    metrics["startup_to_first_answer_s"] = metric(
        statistics.median(r["startup_s"] for r in ours),
        "s",
        False,
        BASELINE,
        statistics.median(r["startup_s"] for r in base),
    )
    spread = {c: [round(r["levels"][c]["output_tokens_per_s"], 1) for r in ours] for c in levels}
    spread_base = {c: [round(r["levels"][c]["output_tokens_per_s"], 1) for r in base] for c in levels}
    return {
        "scenario": "serving-overhead",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "metrics": metrics,
        "notes": (
            f"SmolLM2-135M-Instruct bf16 on vllm-cpu, streaming chat, {repeats} run(s) per server, median "
            f"quoted; servers run one after the other (never side by side), each warmed up first; "
            f"ignore_eos so every request yields max_tokens. Output tok/s per run, llm-serve: {spread}, "
            f"vLLM: {spread_base}. llm-serve path: Serve HTTP proxy -> router replica -> LLMServer replica "
            f"-> vLLM engine core; vLLM's: API server -> engine core. Start-up includes Ray and Serve for "
            f"llm-serve (model already converted)."
        ),
    }


def plot(report_runs: dict[str, list[dict]], levels: list[int], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, runs in report_runs.items():
        tput = [_median(runs, c, "output_tokens_per_s") for c in levels]
        ttft = [_median(runs, c, "ttft_ms_p50") for c in levels]
        axes[0].plot(levels, tput, marker="o", label=name)
        axes[1].plot(tput, ttft, marker="o", label=name)
    axes[0].set(xlabel="concurrent clients", ylabel="output tokens/s", title="Throughput")
    axes[1].set(xlabel="output tokens/s", ylabel="TTFT p50 (ms)", title="Latency against throughput")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle("SmolLM2-135M on vllm-cpu, 2 cores: llm-serve vs vLLM's own server")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: 4x concurrency, at least 16")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "LLM_SERVE_HOME": os.environ.get("LLM_SERVE_HOME", str(Path("~/.llm-serve").expanduser()))}
    config = load_config(CONFIG)
    os.environ["LLM_SERVE_HOME"] = env["LLM_SERVE_HOME"]
    model = config.models[0]
    model_dir = resolve_model_source(model.source, config.home_path, pull=True)
    runs: dict[str, list[dict]] = {"llm-serve": [], "vllm-api-server": []}
    for i in range(args.repeats):
        _log(f"repeat {i + 1}/{args.repeats}")
        # Alternate the order so neither server always runs on a machine the other just warmed.
        order = [BenchStack(env), VllmServer(env, model_dir, model.id)]
        for server in order if i % 2 == 0 else reversed(order):
            runs[server.name].append(
                measure(server, model.id, args.concurrency, args.requests_per_level, args.max_tokens)
            )
    command = "python benchmarks/serving_overhead.py " + " ".join(argv or sys.argv[1:])
    report = build_report(runs["llm-serve"], runs["vllm-api-server"], args.concurrency, command, args.repeats)
    write_report(report)
    (RESULTS / "raw" / "serving-overhead-runs.json").write_text(json.dumps(runs, indent=2))
    plot(runs, args.concurrency, RESULTS / "serving-overhead.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
