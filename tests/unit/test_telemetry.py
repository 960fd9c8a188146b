"""Tracing, metrics and the groundedness monitor through the router's HTTP app with stand-in engines.

Spans go to the `memory` exporter's process-local store (no Ray in unit tests); the integration
suite checks the same trace across real Serve replicas through the cluster-wide collector.
"""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from starlette.requests import ClientDisconnect

from llm_serve.config import GroundednessMonitorConfig, parse_config
from llm_serve.engine.lora_server import traced_engine_stream
from llm_serve.eval.groundedness import GROUNDEDNESS_EVENT, GroundednessMonitor, score_groundedness
from llm_serve.eval.toxicity_monitor import TOXICITY_EVENT
from llm_serve.router.ingress import Router
from llm_serve.router.state import RouterState
from llm_serve.telemetry import metrics as metrics_module
from llm_serve.telemetry import tracing
from llm_serve.telemetry.collector import local_store
from llm_serve.telemetry.metrics import ServingMetrics
from tests.unit.fakes import GREEDY, A, B, Engine, chat, stream_items

INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{INCOMING_TRACE}-{INCOMING_SPAN}-01"


@pytest.fixture(autouse=True)
def fresh_tracing() -> Iterator[None]:
    tracing.shutdown()
    local_store().clear()
    yield
    tracing.shutdown()
    local_store().clear()


def build(tracing_cfg: dict[str, Any] | None, **extra: Any) -> tuple[httpx.AsyncClient, dict[str, Engine], Router]:
    telemetry = {"tracing": {"exporter": "memory", "schedule_delay_ms": 10, **tracing_cfg}} if tracing_cfg else {}
    config = parse_config(
        {
            "models": [
                {"id": A, "source": "x", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
                {"id": B, "source": "x"},
            ],
            "embedding_models": [],
            "telemetry": telemetry,
            **extra,
        }
    )
    engines = {A: Engine(A), B: Engine(B)}
    router = Router(config, {m: e.handle for m, e in engines.items()}, {}, None, state=RouterState(config))
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=router.build_asgi_app()), base_url="http://test")
    return client, engines, router


def spans_of(trace_id: str) -> dict[str, dict[str, Any]]:
    tracing.flush()
    return {s["name"]: s for s in local_store().trace(trace_id)}


async def test_one_trace_from_ingress_to_engine_with_genai_attributes_and_no_content() -> None:
    client, engines, _ = build({"enabled": True})
    async with client:
        resp = await client.post(
            "/v1/chat/completions",
            json=chat(A, stream=True, max_tokens=8, **GREEDY),
            headers={"traceparent": TRACEPARENT},
        )
    assert resp.status_code == 200 and resp.text.endswith("data: [DONE]\n\n")
    assert resp.headers["x-trace-id"] == INCOMING_TRACE  # the caller's trace continues through us
    spans = spans_of(INCOMING_TRACE)
    ingress, gen = spans["POST /v1/chat/completions"], spans[f"chat {A}"]
    assert ingress["kind"] == "SERVER" and ingress["parent_span_id"] == INCOMING_SPAN
    assert ingress["attributes"]["http.response.status_code"] == 200
    assert gen["kind"] == "CLIENT" and gen["parent_span_id"] == ingress["span_id"]
    for child in ("llm_serve.auth",):
        assert spans[child]["parent_span_id"] == ingress["span_id"]
    assert spans["llm_serve.cache_lookup"]["parent_span_id"] == gen["span_id"]
    attrs = gen["attributes"]
    assert attrs["gen_ai.operation.name"] == "chat"
    assert attrs["gen_ai.provider.name"] == "vllm"
    assert attrs["gen_ai.request.model"] == A
    assert attrs["gen_ai.request.max_tokens"] == 8 and attrs["gen_ai.request.temperature"] == 0
    assert attrs["gen_ai.response.id"] == "c1"
    assert list(attrs["gen_ai.response.finish_reasons"]) == ["stop"]
    assert attrs["gen_ai.usage.input_tokens"] == 10 and attrs["gen_ai.usage.output_tokens"] == 4
    assert attrs["llm_serve.cache"] == "miss" and attrs["llm_serve.cost_usd"] > 0
    assert [e["name"] for e in gen["events"]] == ["gen_ai.first_token"]
    assert not any(k.startswith(("gen_ai.input", "gen_ai.output")) for s in spans.values() for k in s["attributes"])
    # The engine call carries the chat span as its parent (a W3C traceparent in RawRequestInfo).
    raw = engines[A].handle.raw[-1]
    assert raw.headers["traceparent"].split("-")[1:3] == [INCOMING_TRACE, gen["span_id"]]


async def test_new_trace_without_traceparent_and_cached_answer_is_traced_as_hit() -> None:
    client, engines, _ = build({"enabled": True})
    async with client:
        first = await client.post("/v1/chat/completions", json=chat(A, **GREEDY))
        second = await client.post("/v1/chat/completions", json=chat(A, **GREEDY))
    assert len(engines[A].calls) == 1
    assert first.headers["x-trace-id"] != second.headers["x-trace-id"]
    spans = spans_of(second.headers["x-trace-id"])
    ingress = spans["POST /v1/chat/completions"]
    assert ingress["parent_span_id"] is None
    assert spans[f"chat {A}"]["attributes"]["llm_serve.cache"] == "hit"
    assert spans["llm_serve.cache_lookup"]["attributes"]["llm_serve.cache"] == "hit"
    assert spans[f"chat {A}"]["attributes"]["gen_ai.response.id"] == "chatcmpl-1"


async def test_content_only_when_opted_in_and_errors_marked() -> None:
    client, _, _ = build({"enabled": True, "capture_content": True})
    async with client:
        ok = await client.post("/v1/chat/completions", json=chat(A, question="secret question"))
        bad = await client.post("/v1/chat/completions", json=chat("nope"))
    gen = spans_of(ok.headers["x-trace-id"])[f"chat {A}"]
    assert "secret question" in gen["attributes"]["gen_ai.input.messages"]
    assert f"answer from {A}" in gen["attributes"]["gen_ai.output.messages"]
    assert bad.status_code == 404
    failed = spans_of(bad.headers["x-trace-id"])
    # An unknown model names no span (clients choose it: unbounded names); the attribute keeps it.
    assert failed["chat"]["status"] == "ERROR" and failed["chat"]["attributes"]["gen_ai.request.model"] == "nope"
    assert failed["chat"]["attributes"]["error.type"] == "model_not_found"
    assert not failed["chat"]["events"]  # a 4xx is an answer, not an exception with a stack trace
    assert failed["POST /v1/chat/completions"]["attributes"]["http.response.status_code"] == 404


async def test_sampling_zero_records_nothing_and_tracing_off_adds_no_header() -> None:
    client, engines, _ = build({"enabled": True, "sampling_ratio": 0.0})
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(A))
    assert spans_of(resp.headers["x-trace-id"]) == {}
    assert engines[A].handle.raw[-1] is None  # nothing recorded: nothing to carry
    tracing.shutdown()
    client, engines, _ = build(None)
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(A), headers={"traceparent": TRACEPARENT})
    assert "x-trace-id" not in resp.headers and engines[A].handle.raw[-1] is None


async def test_admin_traces_serves_the_memory_collector() -> None:
    client, _, _ = build({"enabled": True})
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(A))
        tracing.flush()
        trace_id = resp.headers["x-trace-id"]
        listed = (await client.get("/admin/traces")).json()["data"]
        held = (await client.get(f"/admin/traces/{trace_id}")).json()
        missing = await client.get(f"/admin/traces/{'0' * 32}")
    assert trace_id in listed
    assert {s["name"] for s in held["spans"]} >= {"POST /v1/chat/completions", f"chat {A}"}
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "trace_not_found"


async def test_engine_side_span_is_the_routers_child_with_first_token_and_usage() -> None:
    assert tracing.setup_tracing({"enabled": True, "exporter": "memory", "schedule_delay_ms": 10}, "engine")
    parent = tracing.context_from({"traceparent": TRACEPARENT})

    class Body:
        model, stream, max_tokens, temperature = A, True, 8, 0.0

    async def upstream() -> AsyncIterator[Any]:
        for item in stream_items("hello", A):
            yield item

    relayed = [item async for item in traced_engine_stream(upstream(), "chat", Body(), parent)]
    assert relayed == stream_items("hello", A)  # the relay changes nothing
    span = spans_of(INCOMING_TRACE)[f"chat {A}"]
    assert span["kind"] == "SERVER" and span["parent_span_id"] == INCOMING_SPAN
    assert span["attributes"]["gen_ai.usage.output_tokens"] == 4
    assert list(span["attributes"]["gen_ai.response.finish_reasons"]) == ["stop"]
    assert span["events"][0]["name"] == "gen_ai.first_token"


# ---- metrics --------------------------------------------------------------------------------------


class Recorder:
    """Stands in for ray.util.metrics classes: keeps every (value, tags) recorded."""

    registry: dict[str, Recorder] = {}

    def __init__(self, name: str, description: str = "", *args: Any, **kwargs: Any) -> None:
        self.name, self.values = name, []
        Recorder.registry[name] = self

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.values.append((value, dict(tags or {})))

    observe = set = inc


@pytest.fixture
def recorded(monkeypatch: pytest.MonkeyPatch) -> dict[str, Recorder]:
    import ray.util.metrics

    Recorder.registry = {}
    for cls in ("Counter", "Histogram", "Gauge"):
        monkeypatch.setattr(ray.util.metrics, cls, Recorder)
    return Recorder.registry


async def test_metrics_follow_each_request(recorded: dict[str, Recorder]) -> None:
    client, _, _ = build(None)
    async with client:
        await client.post("/v1/chat/completions", json=chat(A, stream=True, **GREEDY))
        await client.post("/v1/chat/completions", json=chat(A, **GREEDY))
        await client.post("/v1/chat/completions", json=chat("nope"))
    statuses = [(v, t["status"]) for v, t in recorded["llm_serve_requests"].values]
    assert statuses == [(1, "200"), (1, "200"), (1, "404")]
    assert [(t["code"], t["model"]) for _, t in recorded["llm_serve_errors"].values] == [("model_not_found", "unknown")]
    assert [t["result"] for _, t in recorded["llm_serve_cache_lookups"].values] == ["miss", "hit"]
    assert len(recorded[metrics_module.TIME_TO_FIRST_TOKEN].values) == 1  # streams only
    assert len(recorded[metrics_module.TIME_PER_OUTPUT_TOKEN].values) == 1
    tokens = {(t["token_type"], v) for v, t in recorded["llm_serve_tokens"].values}
    assert ("input", 10) in tokens and ("output", 4) in tokens
    assert all(v > 0 for v, _ in recorded["llm_serve_cost_usd"].values)
    ongoing = [v for v, t in recorded["llm_serve_requests_ongoing"].values]
    assert ongoing[-1] == 0 and max(ongoing) == 1
    assert recorded["llm_serve_requests_queued"].values[-1][0] == 0


def test_disabled_metrics_record_nothing(recorded: dict[str, Recorder]) -> None:
    from llm_serve.config import MetricsConfig

    ServingMetrics(MetricsConfig(enabled=False))
    assert recorded == {}


# ---- groundedness ---------------------------------------------------------------------------------

CONTEXT = [
    "E4 means the back cover is not closed: close the cover until both latches click.",
    "Replace the CF-3021 filter every 6 months and reset the counter.",
]


def test_groundedness_tells_supported_from_invented_answers() -> None:
    grounded = score_groundedness("Close the back cover until both latches click.", CONTEXT)
    assert grounded.score == 1.0 and grounded.sentences == 1
    invented = score_groundedness(
        "Close the back cover. Then call the hotline at 555-0100 and ask for a free replacement motor.", CONTEXT
    )
    assert invented.score == 0.5 and invented.unsupported == (
        "Then call the hotline at 555-0100 and ask for a free replacement motor.",
    )
    wrong_number = score_groundedness("Replace the CF-3021 filter every 12 years.", CONTEXT)
    assert wrong_number.score < 1.0
    assert score_groundedness("", CONTEXT).score == 1.0  # nothing claimed, nothing to refute


async def test_monitor_exports_the_rate_and_a_span_event(recorded: dict[str, Recorder]) -> None:
    assert tracing.setup_tracing({"enabled": True, "exporter": "memory", "schedule_delay_ms": 10}, "router")
    metrics = ServingMetrics()
    monitor = GroundednessMonitor(GroundednessMonitorConfig(sample_rate=1.0), metrics, random.Random(0))
    parent = tracing.tracer().start_span("chat x")
    parent.end()
    assert monitor.sample()
    assert monitor.submit(
        "Call the hotline for a free motor.",
        CONTEXT,
        model=A,
        collection="kb",
        request_id="r1",
        parent=parent.get_span_context(),
    )
    assert monitor.submit(
        "Close the cover until both latches click.", CONTEXT, model=A, collection="kb", request_id="r2"
    )
    for task in list(monitor.pending):
        await task
    assert monitor.scored == 2
    assert recorded["llm_serve_rag_hallucination_rate"].values[-1][0] == 0.5
    verdicts = sorted(t["verdict"] for _, t in recorded["llm_serve_rag_scored"].values)
    assert verdicts == ["grounded", "hallucinated"]
    spans = spans_of(tracing.trace_id_of(parent))
    event = spans["groundedness kb"]["events"][0]
    assert event["name"] == GROUNDEDNESS_EVENT and event["attributes"]["llm_serve.groundedness.hallucinated"]
    assert spans["groundedness kb"]["parent_span_id"] == spans["chat x"]["span_id"]
    assert not GroundednessMonitor(GroundednessMonitorConfig(sample_rate=0.0), metrics).sample()


async def test_toxicity_monitor_scores_sampled_answers_streamed_or_not(recorded: dict[str, Recorder]) -> None:
    assert tracing.setup_tracing({"enabled": True, "exporter": "memory", "schedule_delay_ms": 10}, "router")
    client, _, router = build(None, telemetry={"toxicity": {"sample_rate": 1.0, "threshold": 0.5}})
    monitor = router.observer.toxicity
    async with client:
        plain = await client.post("/v1/chat/completions", json=chat(A, **GREEDY))
        streamed = await client.post("/v1/chat/completions", json=chat(A, stream=True, **GREEDY))
    assert plain.status_code == streamed.status_code == 200
    for task in list(monitor.pending):
        await task
    assert monitor.scored == 2  # the stand-in's "answer from model-a", once as JSON and once streamed
    assert [t for _, t in recorded["llm_serve_output_toxicity_scored"].values] == [{"verdict": "clean"}] * 2
    assert recorded["llm_serve_output_toxic_rate"].values[-1][0] == 0.0
    parent = tracing.tracer().start_span("chat x")
    parent.end()
    monitor.record(0.97, model=A, request_id="r9", parent=parent.get_span_context())
    assert recorded["llm_serve_output_toxic_rate"].values[-1][0] == pytest.approx(1 / 3)
    event = spans_of(tracing.trace_id_of(parent))["toxicity"]["events"][0]
    assert event["name"] == TOXICITY_EVENT and event["attributes"]["llm_serve.toxicity.toxic"] is True
    off, _, quiet = build(None, telemetry={"toxicity": {"sample_rate": 0.0}})
    async with off:
        await off.post("/v1/chat/completions", json=chat(A, **GREEDY))
    assert quiet.observer.toxicity.scored == 0 and not quiet.observer.toxicity.pending


def test_grafana_dashboard_queries_only_series_we_export(recorded: dict[str, Recorder]) -> None:
    """The dashboard is hand-maintained JSON: every metric it queries must be one ServingMetrics defines."""
    import json
    import re
    from pathlib import Path

    ServingMetrics()
    dashboard = json.loads((Path(__file__).parents[2] / "cluster" / "grafana" / "llm-serve-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    queried = {re.sub(r"_(bucket|total)$", "", name) for e in exprs for name in re.findall(r"\bray_(\w+)", e)}
    assert queried and queried <= set(recorded), sorted(queried - set(recorded))
    assert set(recorded) <= queried, f"exported but not on the dashboard: {sorted(set(recorded) - queried)}"


def test_otlp_exporters_are_built_from_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_serve.config import TracingConfig

    http = tracing._exporter(TracingConfig(enabled=True, endpoint="http://collector:4318", headers={"x-k": "v"}))
    assert http._endpoint == "http://collector:4318/v1/traces" and http._client._headers["x-k"] == "v"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://from-env:4318/v1/traces")
    assert tracing._exporter(TracingConfig(enabled=True))._endpoint == "http://from-env:4318/v1/traces"
    grpc = tracing._exporter(TracingConfig(enabled=True, protocol="grpc", endpoint="collector:4317"))
    assert type(grpc).__module__.startswith("opentelemetry.exporter.otlp.proto.grpc")
    assert not tracing.setup_tracing({"enabled": False}, "router") and not tracing.enabled()


async def test_malformed_parameters_stay_a_validation_error_and_unmatched_paths_name_no_route() -> None:
    client, _, _ = build({"enabled": True})
    async with client:
        bad = await client.post("/v1/chat/completions", json=chat(A, stop=5, temperature="hot"))
        scan = await client.get("/wp-login.php")
    assert bad.status_code in (400, 422) and bad.json()["error"]["type"] == "invalid_request_error"
    assert scan.status_code == 404
    spans = spans_of(scan.headers["x-trace-id"])
    assert list(spans) == ["GET"] and "http.route" not in spans["GET"]["attributes"]


async def test_stream_whose_body_never_starts_is_still_settled(recorded: dict[str, Recorder]) -> None:
    """The client is gone before the first body chunk: the ledger row, span and gauges still settle."""
    _, _, router = build({"enabled": True})
    app = router.build_asgi_app()
    body = json.dumps(chat(A, stream=True)).encode()
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            raise OSError("client went away")

    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json")],
        "client": ("127.0.0.1", 1),
        "server": ("test", 80),
    }
    with pytest.raises((OSError, ClientDisconnect)):  # Starlette re-raises the failed send as ClientDisconnect
        await app(scope, receive, send)
    rows = await router.state.recent(10, None)
    assert [(r["status"], r["stream"]) for r in rows] == [(499, True)]
    assert router.observer.ongoing["chat"] == 0
    assert [t["status"] for _, t in recorded["llm_serve_requests"].values] == ["499"]
