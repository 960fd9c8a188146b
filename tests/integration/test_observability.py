"""Traces and metrics across the real Serve app: router, embedder and engine replicas, vLLM, Milvus.

The suite's stack runs with `telemetry.tracing.exporter: memory`, so every replica ships its spans
to the cluster's span collector and the router serves them at /admin/traces/{trace_id}. Metrics are
read from the private Ray node's Prometheus endpoint, where Ray's metrics agent publishes them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_serve.config import load_config

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
CONFIG = load_config(Path(__file__).with_name("config.yaml"))
COLLECTION = "obs_manual"
TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "10f067aa0ba902b7"
WAIT_S = 60


@pytest.fixture(scope="module")
def collection(stack) -> str:
    out = stack.cli("ingest", str(ROOT / "data" / "manual"), "--collection", COLLECTION, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return COLLECTION


def wait_for_spans(url: str, trace_id: str, expected: set[tuple[str, str | None]]) -> dict[str, list[dict[str, Any]]]:
    """Spans are exported in batches from each replica: poll until every expected (name, kind) arrived.

    By name and kind, not name alone: the router's CLIENT span and the engine's SERVER span are both
    `chat {model}`, and on a slow engine the router's is exported long before the engine's.
    """
    deadline = time.monotonic() + WAIT_S
    by_name: dict[str, list[dict[str, Any]]] = {}
    missing = expected
    while time.monotonic() < deadline:
        resp = httpx.get(f"{url}/admin/traces/{trace_id}", timeout=10)
        if resp.status_code == 200:
            by_name = {}
            for span in resp.json()["spans"]:
                by_name.setdefault(span["name"], []).append(span)
            missing = {
                (name, kind)
                for name, kind in expected
                if not any(kind is None or s["kind"] == kind for s in by_name.get(name, []))
            }
            if not missing:
                return by_name
        time.sleep(0.5)
    raise AssertionError(f"spans {sorted(missing, key=str)} of {trace_id} never arrived; got {sorted(by_name)}")


def one(spans: dict[str, list[dict[str, Any]]], name: str, kind: str | None = None) -> dict[str, Any]:
    found = [s for s in spans[name] if kind is None or s["kind"] == kind]
    assert len(found) == 1, (name, kind, found)
    return found[0]


def test_rag_request_is_one_trace_from_ingress_to_engine(stack, collection: str) -> None:
    model, embedder = stack.model, CONFIG.rag.embedding_model
    resp = httpx.post(
        f"{stack.base_url}/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": "What does error code E4 mean?"}],
            "max_tokens": 24,
            "temperature": 0,
            "stream": True,
            "rag": {"collection": collection},
        },
        headers={"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01", "cache-control": "no-cache"},
        timeout=300,
    )
    assert resp.status_code == 200 and resp.text.rstrip().endswith("data: [DONE]")
    assert resp.headers["x-trace-id"] == TRACE
    expected = {
        ("POST /v1/chat/completions", "SERVER"),
        (f"chat {model}", "CLIENT"),
        (f"chat {model}", "SERVER"),
        (f"retrieval {collection}", None),
        (f"search {collection}", None),
        (f"embeddings {embedder}", "CLIENT"),
        (f"embeddings {embedder}", "SERVER"),
        (f"groundedness {collection}", None),
    }
    spans = wait_for_spans(stack.url, TRACE, expected)
    # Every span of every process carries the caller's trace id (the collector is queried by it).
    ingress = one(spans, "POST /v1/chat/completions")
    assert ingress["kind"] == "SERVER" and ingress["parent_span_id"] == CALLER_SPAN
    router_chat = one(spans, f"chat {model}", "CLIENT")
    engine_chat = one(spans, f"chat {model}", "SERVER")
    retrieval = one(spans, f"retrieval {collection}")
    embed_client = one(spans, f"embeddings {embedder}", "CLIENT")
    embed_server = one(spans, f"embeddings {embedder}", "SERVER")
    assert router_chat["parent_span_id"] == ingress["span_id"]
    assert retrieval["parent_span_id"] == router_chat["span_id"]
    assert embed_client["parent_span_id"] == retrieval["span_id"]
    assert one(spans, f"search {collection}")["parent_span_id"] == retrieval["span_id"]
    # Across the Ray handle calls: the embedder's and the engine's replicas continue the trace.
    assert embed_server["parent_span_id"] == embed_client["span_id"]
    assert engine_chat["parent_span_id"] == router_chat["span_id"]
    components = {s["resource"].get("llm_serve.component") for group in spans.values() for s in group}
    assert {"router", "embedder", "engine"} <= components
    # GenAI attributes on both sides; the first token as an event on the engine's span.
    for span in (router_chat, engine_chat):
        attrs = span["attributes"]
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == model
        assert attrs["gen_ai.usage.input_tokens"] > 0 and 0 < attrs["gen_ai.usage.output_tokens"] <= 24
        assert attrs["gen_ai.response.finish_reasons"] and attrs["gen_ai.response.id"]
        assert attrs["gen_ai.request.temperature"] == 0
    assert "gen_ai.first_token" in [e["name"] for e in engine_chat["events"]]
    assert "gen_ai.first_token" in [e["name"] for e in router_chat["events"]]
    assert router_chat["attributes"]["llm_serve.cache"] == "bypass"
    assert router_chat["attributes"]["llm_serve.cost_usd"] > 0
    assert retrieval["attributes"]["gen_ai.data_source.id"] == collection
    assert retrieval["attributes"]["llm_serve.rag.used"] >= 1
    # The online monitor's verdict hangs off the request's span, after the response.
    verdict = one(spans, f"groundedness {collection}")
    assert verdict["parent_span_id"] == router_chat["span_id"]
    assert verdict["events"][0]["name"] == "llm_serve.groundedness"
    assert 0.0 <= verdict["events"][0]["attributes"]["llm_serve.groundedness.score"] <= 1.0
    # No prompt or completion text anywhere by default.
    for group in spans.values():
        for span in group:
            assert not any(k in span["attributes"] for k in ("gen_ai.input.messages", "gen_ai.output.messages"))
            assert "E4" not in str(span["attributes"])


def test_metrics_endpoint_shows_our_series(stack) -> None:
    with httpx.Client(base_url=stack.base_url, timeout=300) as client:
        ok = client.post(
            "/chat/completions",
            json={
                "model": stack.model,
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4,
                "stream": True,
            },
        )
        assert ok.status_code == 200
        assert client.post("/chat/completions", json={"model": "no-such-model", "messages": []}).status_code == 404
    url = f"http://127.0.0.1:{CONFIG.ray.metrics_export_port}/metrics"
    wanted = [
        "ray_llm_serve_requests_total{",
        'status="404"',
        "ray_llm_serve_errors_total{",
        'code="model_not_found"',
        "ray_gen_ai_server_request_duration_bucket{",
        "ray_gen_ai_server_time_to_first_token_bucket{",
        "ray_gen_ai_server_time_per_output_token_bucket{",
        "ray_llm_serve_tokens_total{",
        'token_type="output"',
        "ray_llm_serve_cost_usd_total{",
        "ray_llm_serve_requests_ongoing{",
        "ray_llm_serve_retrieval_duration_bucket{",
        "ray_llm_serve_rag_hallucination_rate{",
    ]
    deadline = time.monotonic() + WAIT_S
    missing = wanted
    while time.monotonic() < deadline:
        body = httpx.get(url, timeout=10).text
        missing = [w for w in wanted if w not in body]
        if not missing:
            break
        time.sleep(2)
    assert not missing, f"not exported: {missing}"
