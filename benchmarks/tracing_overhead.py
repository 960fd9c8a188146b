"""What tracing costs: throughput with tracing on (sampling 1.0, OTLP export) against off, same engines.

One llm-serve stack is started with tracing on, exporting over OTLP/HTTP to a sink in this process
(a real export path: protobuf encoding, batching and HTTP posts, received and counted here, spans
included). A second router application is then deployed on the same cluster at `/untraced`, built
from the same config with tracing off and bound to the same engine and state deployments. Its
requests carry no trace context, so the engines make no spans for them either. Rounds alternate
between the two routes on the same warm engines, which removes the drift a stack restart would add,
and the medians of the rounds are compared.

    python benchmarks/tracing_overhead.py [--rounds 4] [--requests 64] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import http.server
import os
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.loadgen import run_level
from benchmarks.report import RESULTS, machine, metric, write_report
from benchmarks.stack import BenchStack
from llm_serve.config import Config

SCENARIO = "tracing-overhead"
UNTRACED_APP = "llm-serve-untraced"
UNTRACED_PREFIX = "/untraced"
SINK_PORT = 4399


class OtlpSink:
    """An OTLP/HTTP trace receiver that decodes and counts what it is sent (and keeps nothing)."""

    def __init__(self, port: int) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        sink = self
        self.posts = self.spans = self.bytes = 0
        self.lock = threading.Lock()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest.FromString(body)
                n = sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans)
                with sink.lock:
                    sink.posts, sink.spans, sink.bytes = sink.posts + 1, sink.spans + n, sink.bytes + len(body)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def snapshot(self) -> tuple[int, int]:
        with self.lock:
            return self.posts, self.spans

    def close(self) -> None:
        self.server.shutdown()


def traced_patch(port: int) -> Any:
    def patch(data: dict[str, Any]) -> None:
        data["telemetry"] = {
            "tracing": {
                "enabled": True,
                "exporter": "otlp",
                "protocol": "http",
                "endpoint": f"http://127.0.0.1:{port}",
                "sampling_ratio": 1.0,
            }
        }

    return patch


def deploy_untraced(config: Config) -> None:
    """A second router, tracing off, on the first application's engines and shared state."""
    import ray
    from ray import serve

    from llm_serve.app import load_prompt_registry, load_rag_prompt
    from llm_serve.engine.pool import deployment_safe, engine_deployment_name
    from llm_serve.local_cluster import ray_env
    from llm_serve.router.ingress import Router

    os.environ.update(ray_env(config))  # the bench stack's Ray wants its token
    ray.init(address=f"127.0.0.1:{config.ray.gcs_port}", namespace="llm-serve", log_to_driver=False)
    off = config.model_copy(deep=True)
    off.telemetry.tracing.enabled = False
    app = config.app_name
    engines = {m.id: serve.get_deployment_handle(engine_deployment_name(m.id), app) for m in config.models}
    embedders = {
        e.id: serve.get_deployment_handle(f"embedder-{deployment_safe(e.id)}", app) for e in config.embedding_models
    }
    state = serve.get_deployment_handle("router-state", app)
    prompts = {"rag": load_rag_prompt(config).to_dict(), "registry": load_prompt_registry(config).to_dict()}
    router = serve.deployment(serve.ingress()(Router), name="router-untraced").options(
        num_replicas=config.router.num_replicas,
        max_ongoing_requests=config.router.max_ongoing_requests,
        ray_actor_options={"num_cpus": config.router.num_cpus},
    )
    serve.run(
        router.bind(off.model_dump(mode="json"), engines, embedders, prompts, state),
        name=UNTRACED_APP,
        route_prefix=UNTRACED_PREFIX,
    )


def round_robin(stack: BenchStack, sink: OtlpSink, args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    routes = {"traced": stack.url, "untraced": stack.url + UNTRACED_PREFIX}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in routes}

    async def go() -> None:
        for url in routes.values():  # warm both routers and the engine
            await run_level(url, stack.model, 2, 4, 8)
        for i in range(args.rounds):
            order = list(routes.items()) if i % 2 == 0 else list(routes.items())[::-1]
            for name, url in order:
                before = sink.snapshot()[1]
                result = await run_level(url, stack.model, args.concurrency, args.requests, args.max_tokens)
                time.sleep(1.5)  # the replicas' batch exporters flush every second
                result["spans_exported"] = sink.snapshot()[1] - before
                runs[name].append(result)
                print(
                    f"round {i + 1} {name:9} {result['output_tokens_per_s']:7.1f} tok/s  "
                    f"ttft p50 {result['ttft_ms_p50']:.0f} ms  spans {result['spans_exported']}  "
                    f"errors {result['errors']}",
                    flush=True,
                )

    asyncio.run(go())
    return runs


def build_report(runs: dict[str, list[dict[str, Any]]], args: argparse.Namespace, command: str) -> dict[str, Any]:
    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    c = args.concurrency
    tok_on, tok_off = med("traced", "output_tokens_per_s"), med("untraced", "output_tokens_per_s")
    spread = {
        name: [round(r["output_tokens_per_s"], 1) for r in rs] for name, rs in runs.items()
    }  # every round, for the notes
    spans_per_request = statistics.median(r["spans_exported"] / max(1, r["requests"]) for r in runs["traced"])
    return {
        "scenario": SCENARIO,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": command,
        "metrics": {
            f"output_tokens_per_s@c{c}": metric(tok_on, "tok/s", True, "tracing-off", tok_off),
            f"requests_per_s@c{c}": metric(
                med("traced", "requests_per_s"), "req/s", True, "tracing-off", med("untraced", "requests_per_s")
            ),
            f"ttft_p50_ms@c{c}": metric(
                med("traced", "ttft_ms_p50"), "ms", False, "tracing-off", med("untraced", "ttft_ms_p50")
            ),
            f"tpot_p50_ms@c{c}": metric(
                med("traced", "tpot_ms_p50"), "ms", False, "tracing-off", med("untraced", "tpot_ms_p50")
            ),
            "spans_exported_per_request": metric(spans_per_request, "spans", False),
        },
        "notes": (
            f"{args.rounds} alternating rounds per mode of {args.requests} streamed chat requests at concurrency {c}, "
            f"{args.max_tokens} output tokens each (ignore_eos), temperature 0.8 (never cached); medians quoted. "
            f"Per-round output tok/s: {spread}. Tracing on = sampling 1.0, BatchSpanProcessor, OTLP/HTTP protobuf "
            "to a local receiver that decodes every export; off = a second router application with tracing "
            "disabled on the same engine replicas, so the engine makes no spans for its requests either."
        ),
        "runs": runs,
    }


def plot(runs: dict[str, list[dict[str, Any]]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, marker in (("traced", "o"), ("untraced", "s")):
        values = [r["output_tokens_per_s"] for r in runs[name]]
        ax.plot(
            range(1, len(values) + 1), values, marker=marker, label=f"tracing {'on' if name == 'traced' else 'off'}"
        )
    ax.set_xlabel("round")
    ax.set_ylabel("output tokens/s")
    ax.set_title("llm-serve throughput with tracing on (sampling 1.0) and off")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--sink-port", type=int, default=SINK_PORT)
    args = parser.parse_args(argv)
    command = "python benchmarks/tracing_overhead.py " + " ".join(argv if argv is not None else sys.argv[1:])

    sink = OtlpSink(args.sink_port)
    stack = BenchStack({**os.environ}, traced_patch(args.sink_port))
    try:
        print("starting the traced stack (about 3 minutes)...", flush=True)
        stack.start()
        deploy_untraced(stack.config)
        runs = round_robin(stack, sink, args)
    finally:
        stack.stop()
        sink.close()
    report = build_report(runs, args, command.strip())
    path = write_report(report)
    plot(runs, RESULTS / f"{SCENARIO}.png")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
