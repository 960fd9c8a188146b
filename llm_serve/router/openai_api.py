"""The OpenAI-compatible ingress: /v1/models, /v1/chat/completions, /v1/completions, health.

`Router` is a plain class (constructible without Ray, given engine handles) that builds its own
FastAPI app; app.py turns it into a Serve ingress deployment. Requests are validated here with vLLM's
own protocol models, so the router rejects bad input before it costs an engine call and the engine
receives exactly the objects Ray Serve LLM's LLMServer expects.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, fields
from typing import Any

from fastapi import FastAPI, Request
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_serve.adapters import AdapterInfo, AdapterRegistry
from llm_serve.config import Config, EmbedderConfig, ModelConfig, RagAlias
from llm_serve.engine.pool import deployment_safe
from llm_serve.eval.groundedness import GroundednessMonitor
from llm_serve.prompts import PromptError, PromptNotFound, PromptRegistry, PromptVariablesError
from llm_serve.prompts.template import PromptTemplate
from llm_serve.rag.embedder import embed_remote
from llm_serve.rag.milvus_server import milvus_uri
from llm_serve.rag.retriever import RagRequest, Retrieval, Retriever, grounded_messages, parse_rag, question_of
from llm_serve.router.auth import ANONYMOUS, Caller, KeyRing
from llm_serve.router.body_limit import BodySizeLimit
from llm_serve.router.cache_keys import CacheContext, exact_key, is_deterministic, semantic_parts
from llm_serve.router.coalesce import Coalescer
from llm_serve.router.embeddings import embedding_response, parse_embedding_request
from llm_serve.router.errors import OpenAIError, from_engine_error, install_error_handlers, invalid_body
from llm_serve.router.ledger import LedgerRow
from llm_serve.router.replay import assemble, refusal_payload, replay
from llm_serve.router.routing import estimate_tokens, route_candidates
from llm_serve.router.semantic_cache import SemanticCache
from llm_serve.router.sse import DONE_EVENT, StreamRelay, sse
from llm_serve.router.state import RouterState, StateClient
from llm_serve.telemetry import genai, tracing
from llm_serve.telemetry.http import TracingMiddleware
from llm_serve.telemetry.metrics import ServingMetrics

logger = logging.getLogger("llm_serve.router")

READY_CHECK_TIMEOUT_S = 5.0
FORCED_RELIST_S = 1.0  # an unknown adapter id re-lists the registry at most this often
REQUEST_ID_HEADER = "x-request-id"
CACHE_HEADER = "x-llm-serve-cache"  # hit | semantic_hit | miss | bypass | coalesced | none
SIMILARITY_HEADER = "x-llm-serve-cache-similarity"
COST_HEADER = "x-llm-serve-cost-usd"
MODEL_HEADER = "x-llm-serve-model"  # the pool that answered (after aliases, auto and fallbacks)
PROMPT_HEADER = "x-llm-serve-prompt"  # name@version+hash of a registry prompt


LEDGER_COLUMNS = tuple(f.name for f in fields(LedgerRow) if f.name != "ts")


@dataclass
class RequestRecord:
    """What one request cost and how it ended: the ledger row, the log line and (later) the metrics."""

    request_id: str
    route: str
    model: str
    stream: bool
    key_name: str = ANONYMOUS
    started: float = field(default_factory=time.monotonic)
    status: int = 200
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    cache: str = "none"
    adapter: str | None = None
    prompt: str | None = None
    error: str | None = None
    finished: bool = False
    accounted: bool = False
    estimated_prompt_tokens: int = 0
    error_code: str | None = None  # the OpenAI error code of a failed request (the errors metric's label)
    # Whether `model` names a configured pool: only then may it label metrics and name spans (a client
    # can send any string as `model`, and unbounded label values would swamp Prometheus).
    model_known: bool = False
    ttft_s: float | None = None  # streamed requests: time to the engine's first output
    span: Span | None = None  # the request's `chat {model}` span, ended when the request is accounted
    trace_id: str | None = None
    # RAG answers sampled for the groundedness monitor: the context they were given.
    rag_contexts: list[str] | None = None
    rag_collection: str | None = None

    def finish(self, status: int | None = None, error: str | None = None, code: str | None = None) -> None:
        if status is not None:
            self.status = status
        self.error = error
        if code is not None:
            self.error_code = code
        self.finished = True

    def take_usage(self, usage: dict[str, Any] | None) -> None:
        usage = usage or {}
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)

    @property
    def latency_ms(self) -> float:
        return (time.monotonic() - self.started) * 1000

    def ledger_row(self) -> dict[str, Any]:
        """The ledger's columns, read off this record (the ledger stamps the time itself)."""
        row = {name: getattr(self, name) for name in LEDGER_COLUMNS}
        row["latency_ms"] = round(row["latency_ms"], 2)
        return row

    def log(self) -> None:
        logger.info(
            "request %s key=%s route=%s model=%s stream=%s status=%d cache=%s prompt_tokens=%d "
            "completion_tokens=%d cost_usd=%.8f latency_ms=%.1f trace_id=%s%s",
            self.request_id,
            self.key_name,
            self.route,
            self.model,
            self.stream,
            self.status,
            self.cache,
            self.prompt_tokens,
            self.completion_tokens,
            self.cost_usd,
            self.latency_ms,
            self.trace_id or "-",
            f" error={self.error}" if self.error else "",
        )


def _protocol() -> Any:
    # Imported lazily: it pulls in vLLM, which unit tests of config or CLI do not need.
    from ray.serve.llm import openai_api_models

    return openai_api_models


class Router:
    """Authenticates, limits, renders prompts, caches, coalesces and routes OpenAI requests to engine pools."""

    def __init__(
        self,
        config: dict[str, Any] | Config,
        engines: dict[str, Any],
        embedders: dict[str, Any] | None = None,
        prompts: dict[str, Any] | None = None,
        state: Any = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else Config.model_validate(config)
        self.engines = engines
        self.embedders = embedders or {}
        prompts = prompts or {}
        self.rag_prompt = PromptTemplate.from_dict(prompts["rag"]) if prompts.get("rag") else None
        self.prompts = PromptRegistry.from_dict(prompts["registry"]) if prompts.get("registry") else None
        self.retriever = Retriever(self.config, self.embedders)
        self.stream_engines = {mid: h.options(stream=True) for mid, h in engines.items()}
        self.keys = KeyRing(self.config.auth)
        self.state = StateClient(state if state is not None else RouterState(self.config))
        self.coalescer = Coalescer(self.config.server.request_timeout_s)
        semantic = self.config.cache.semantic
        self.semantic = (
            SemanticCache(
                semantic, self.config.rag.milvus, milvus_uri(self.config), self.embedders[semantic.embedding_model]
            )
            if semantic.enabled and semantic.embedding_model in self.embedders
            else None
        )
        self.adapters = AdapterCatalog(self.config)
        tracing.setup_tracing(self.config.telemetry.tracing, "router")
        self.metrics = ServingMetrics(self.config.telemetry.metrics)
        self.monitor = GroundednessMonitor(self.config.telemetry.groundedness, self.metrics)
        self.ongoing: dict[str, int] = {}
        self._span_collector: Any = None
        self.waiting_first = 0
        self.created = int(time.time())
        self.api = _protocol()

    # ---- ASGI app -------------------------------------------------------------------------------

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return self.build_asgi_app()

    def build_asgi_app(self) -> FastAPI:
        app = FastAPI(title="llm-serve", version="0.1.0", docs_url="/docs", redoc_url=None)
        install_error_handlers(app)
        app.add_middleware(BodySizeLimit, max_bytes=self.config.server.max_body_bytes)
        app.add_middleware(TracingMiddleware)  # outermost: a refused body is a traced request too
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/readyz", self.readyz, methods=["GET"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model_id:path}", self.get_model, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/embeddings", self.embeddings, methods=["POST"])
        app.add_api_route("/admin/usage", self.admin_usage, methods=["GET"])
        app.add_api_route("/admin/requests", self.admin_requests, methods=["GET"])
        app.add_api_route("/admin/cache", self.admin_cache, methods=["GET"])
        app.add_api_route("/admin/traces", self.admin_traces, methods=["GET"])
        app.add_api_route("/admin/traces/{trace_id}", self.admin_trace, methods=["GET"])
        return app

    # ---- health ---------------------------------------------------------------------------------

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        handles = {**self.engines, **self.embedders}

        async def check(model_id: str) -> str:
            try:
                await asyncio.wait_for(handles[model_id].check_health.remote(), READY_CHECK_TIMEOUT_S)
                return "ready"
            except Exception as exc:
                return f"not ready: {type(exc).__name__}"

        states = dict(zip(handles, await asyncio.gather(*(check(m) for m in handles)), strict=True))
        ready = all(s == "ready" for s in states.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "models": states}, status_code=200 if ready else 503
        )

    # ---- auth and admin -------------------------------------------------------------------------

    def _caller(self, request: Request) -> Caller:
        return self.keys.authenticate(request.headers.get("authorization"), request.headers.get("x-api-key"))

    def _admin(self, request: Request) -> Caller:
        caller = self._caller(request)
        if caller.key is not None and not caller.key.admin:
            raise OpenAIError(403, f"The API key '{caller.name}' is not an admin key", code="admin_only")
        return caller

    async def admin_usage(self, request: Request) -> dict[str, Any]:
        """Spend and tokens per key and model for a calendar period (UTC), from the ledger."""
        self._admin(request)
        period = request.query_params.get("period", "month")
        if period not in ("day", "month", "total"):
            raise OpenAIError(400, "period must be day, month or total", code="invalid_value", param="period")
        return await self.state.call("usage", period, request.query_params.get("key"))

    async def admin_requests(self, request: Request) -> dict[str, Any]:
        """The latest ledger rows (newest first)."""
        self._admin(request)
        try:
            limit = min(1000, max(1, int(request.query_params.get("limit", "100"))))
        except ValueError:
            raise OpenAIError(400, "limit must be an integer", code="invalid_value", param="limit") from None
        rows = await self.state.call("recent", limit, request.query_params.get("key"))
        return {"object": "list", "data": rows}

    async def admin_cache(self, request: Request) -> dict[str, Any]:
        """Exact-cache counters (shared) and this router replica's coalescing counters."""
        self._admin(request)
        return {
            "exact": await self.state.call("cache_stats"),
            "coalescing": {"engine_calls": self.coalescer.calls, "joined": self.coalescer.joined},
        }

    async def _collected(self, method: str, *args: Any) -> Any:
        """A call on the in-memory span collector: the cluster's actor, or this process' store without Ray
        (SpanStore and SpanCollector answer the same methods)."""
        tracing_config = self.config.telemetry.tracing
        if not (tracing_config.enabled and tracing_config.exporter == "memory"):
            raise OpenAIError(
                404,
                "traces are kept in memory only with telemetry.tracing.exporter: memory; "
                "otherwise look them up in your tracing backend",
                code="traces_unavailable",
            )
        import ray

        from llm_serve.telemetry.collector import collector_handle, local_store

        if not ray.is_initialized():
            return getattr(local_store(tracing_config.memory_max_spans), method)(*args)
        if self._span_collector is None:  # a GCS lookup: once, and off the event loop
            self._span_collector = await asyncio.to_thread(collector_handle, tracing_config.memory_max_spans)
        return await getattr(self._span_collector, method).remote(*args)

    async def admin_traces(self, request: Request) -> dict[str, Any]:
        """The most recent trace ids held by the in-memory span collector (newest first)."""
        self._admin(request)
        return {"object": "list", "data": await self._collected("recent_traces", 20)}

    async def admin_trace(self, trace_id: str, request: Request) -> dict[str, Any]:
        """Every span of one trace, from every process, oldest first (the in-memory collector)."""
        self._admin(request)
        spans = await self._collected("trace", trace_id.lower())
        if not spans:
            raise OpenAIError(404, f"no spans of trace '{trace_id}' are held", code="trace_not_found")
        return {"trace_id": trace_id.lower(), "spans": spans}

    # ---- models ---------------------------------------------------------------------------------

    def _model_card(self, model: ModelConfig | EmbedderConfig | RagAlias) -> dict[str, Any]:
        card: dict[str, Any] = {"id": model.id, "object": "model", "created": self.created, "owned_by": "llm-serve"}
        if isinstance(model, ModelConfig):
            card.update(root=model.source, parent=None, max_model_len=model.engine.max_model_len)
        elif isinstance(model, RagAlias):
            card.update(root=model.model, parent=model.model, type="rag", collection=model.collection)
        else:
            card.update(root=model.source, parent=None, type="embedding")
        return card

    def _alias_card(self, alias: str, target: str) -> dict[str, Any]:
        return {
            "id": alias,
            "object": "model",
            "created": self.created,
            "owned_by": "llm-serve",
            "root": target,
            "parent": target,
            "type": "alias",
        }

    def _adapter_card(self, info: AdapterInfo) -> dict[str, Any]:
        return {
            "id": info.model_id,
            "object": "model",
            "created": self.created,
            "owned_by": "llm-serve",
            "root": info.base_model_id,
            "parent": info.base_model_id,
            "type": "adapter",
            "adapter": info.name,
            "adapter_created_at": info.metadata.get("created_at"),
        }

    async def list_models(self, request: Request) -> dict[str, Any]:
        caller = self._caller(request)
        models = [
            *self.config.models,
            *self.config.rag.aliases,
            *(m for m in self.config.embedding_models if m.id in self.embedders),
        ]
        cards = [self._model_card(m) for m in models]
        cards += [self._alias_card(a, t) for a, t in self.config.routing.aliases.items()]
        cards += [self._adapter_card(info) for info in await self.adapters.all()]
        return {"object": "list", "data": [c for c in cards if caller.may_use(c["id"]) or caller.may_use(c["root"])]}

    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        self._caller(request)
        model = (
            self.config.model(model_id)
            or self.config.rag_alias(model_id)
            or (self.config.embedder(model_id) if model_id in self.embedders else None)
        )
        if model is not None:
            return self._model_card(model)
        if model_id in self.config.routing.aliases:
            return self._alias_card(model_id, self.config.routing.aliases[model_id])
        adapter = await self.adapters.find(model_id)
        if adapter is not None:
            return self._adapter_card(adapter)
        raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")

    # ---- embeddings -----------------------------------------------------------------------------

    async def embeddings(self, request: Request) -> Response:
        caller = self._caller(request)
        data = await self._read_json(request)
        model_id = data.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise OpenAIError(
                400, "you must provide a model parameter", code="missing_required_parameter", param="model"
            )
        config = self.config.embedder(model_id)
        if config is None or model_id not in self.embedders:
            hint = " (it is a chat model)" if model_id in self.engines else ""
            raise OpenAIError(
                404, f"The embedding model '{model_id}' does not exist{hint}", code="model_not_found", param="model"
            )
        if not caller.may_use(model_id):
            raise OpenAIError(
                403, f"The API key '{caller.name}' may not use the model '{model_id}'", code="model_not_allowed"
            )
        body, texts = parse_embedding_request(data, config.max_inputs_per_request)
        record = RequestRecord(
            request_id=_request_id(request),
            route="embeddings",
            model=model_id,
            stream=False,
            key_name=caller.name,
            model_known=True,
        )
        self._begin(record, {genai.OPERATION: "embeddings", genai.REQUEST_MODEL: model_id})
        try:
            with _current(record.span):
                return await self._embed(caller, record, model_id, body, texts)
        except asyncio.CancelledError:
            if not record.accounted:
                record.finish(499, "client disconnected")
                await asyncio.shield(self._account(record))
            raise
        except Exception as exc:  # answered as a 500 by the error handler; still one ledger row
            if not record.accounted:
                record.finish(500, f"{type(exc).__name__}: {exc}", "internal_error")
                await self._account(record)
            raise

    async def _embed(
        self, caller: Caller, record: RequestRecord, model_id: str, body: Any, texts: list[str]
    ) -> Response:
        try:
            await self._admit(caller, record)
            try:
                result = await asyncio.wait_for(
                    embed_remote(self.embedders[model_id], model_id, texts), self.config.server.request_timeout_s
                )
            except Exception as exc:
                raise call_failed(record, exc, f"the embedding model '{model_id}'") from None
            if result.error:
                raise OpenAIError(400, result.error, code="context_length_exceeded", param=result.error_param)
            if body.dimensions is not None and body.dimensions != result.vectors.shape[1]:
                raise OpenAIError(
                    400,
                    f"'{model_id}' produces {result.vectors.shape[1]}-dimensional vectors; "
                    f"dimensions={body.dimensions} is not supported",
                    code="invalid_value",
                    param="dimensions",
                )
        except OpenAIError as exc:
            await self._account(record, exc)
            raise
        record.prompt_tokens = result.prompt_tokens
        record.cost_usd = self.config.price(model_id).cost(result.prompt_tokens, 0)
        record.finish(200)
        await self._account(record)
        payload = embedding_response(model_id, result.vectors, result.prompt_tokens, body.encoding_format)
        payload["usage"]["cost_usd"] = record.cost_usd
        return JSONResponse(payload, headers=self._headers(record))

    # ---- shared request plumbing ----------------------------------------------------------------

    async def _read_json(self, request: Request) -> dict[str, Any]:
        raw = await request.body()
        limit = self.config.server.max_body_bytes
        if len(raw) > limit:
            raise OpenAIError(
                413, f"request body of {len(raw)} bytes exceeds the limit of {limit} bytes", code="request_too_large"
            )
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
        return data

    def _validate(self, request_cls: type, data: dict[str, Any]) -> Any:
        try:
            return request_cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_body(exc.errors()) from None
        except ValueError as exc:  # vLLM's own model validators raise plain ValueError
            raise OpenAIError(400, str(exc), code="invalid_value") from None

    async def _admit(self, caller: Caller, record: RequestRecord) -> None:
        """Rate limits and budget, checked and counted atomically in the shared state (no engine call on refusal)."""
        key = caller.key
        if key is None or (key.rpm is None and key.tpm is None and key.budget_usd is None):
            return
        with tracing.tracer().start_as_current_span("llm_serve.admit") as span:
            refusal = await self.state.call("admit", caller.name, key.rpm, key.tpm, key.budget_usd, key.budget_period)
            span.set_attribute("llm_serve.admitted", refusal is None)
        if refusal is not None:
            headers = {"retry-after": str(refusal["retry_after"])} if refusal.get("retry_after") else None
            # OpenAI types an exhausted quota apart from a rate limit; clients back off differently.
            error_type = "insufficient_quota" if refusal["code"] == "insufficient_quota" else None
            raise OpenAIError(429, refusal["message"], code=refusal["code"], type=error_type, headers=headers)

    async def _account(self, record: RequestRecord, exc: OpenAIError | None = None) -> None:
        """Write the ledger row (once), before the client's response completes."""
        if record.accounted:
            return
        if exc is not None and (not record.finished or record.status < 400):
            record.finish(exc.status, exc.message, exc.code)
        elif exc is not None and record.error_code is None:
            record.error_code = exc.code
        record.accounted = True
        self._end(record)
        record.log()
        try:
            await self.state.call("record", record.ledger_row())
        except Exception:
            logger.exception("could not record request %s", record.request_id)

    def _headers(self, record: RequestRecord, **extra: str) -> dict[str, str]:
        served = f"{record.model}:{record.adapter}" if record.adapter else record.model
        headers = {REQUEST_ID_HEADER: record.request_id, MODEL_HEADER: served}
        if record.prompt:
            headers[PROMPT_HEADER] = record.prompt
        if record.route != "embeddings":
            headers[CACHE_HEADER] = record.cache
        return {**headers, **extra}

    # ---- telemetry ------------------------------------------------------------------------------

    def _begin(self, record: RequestRecord, attributes: dict[str, Any]) -> None:
        """Open the request's GenAI span (a child of the ingress span) and count it as ongoing."""
        record.span = tracing.tracer().start_span(
            genai.span_name(record.route, record.model if record.model_known else None),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        record.trace_id = tracing.trace_id_of(record.span)
        self._gauge_ongoing(record.route, +1)

    def _gauge_ongoing(self, route: str, delta: int) -> None:
        self.ongoing[route] = self.ongoing.get(route, 0) + delta
        self.metrics.ongoing.set(self.ongoing[route], {"route": route})

    def _end(self, record: RequestRecord) -> None:
        """Close the request's span with what it cost and how it ended; record its metrics. Once."""
        span, record.span = record.span, None
        if span is None:
            return
        self._gauge_ongoing(record.route, -1)
        self.metrics.record(record)
        if not span.is_recording():
            span.end()
            return
        served = f"{record.model}:{record.adapter}" if record.adapter else record.model
        if not record.model_known:
            served = ""
        span.update_name(genai.span_name(record.route, served or None))
        attributes: dict[str, Any] = {
            genai.INPUT_TOKENS: record.prompt_tokens,
            "llm_serve.request_id": record.request_id,
            "llm_serve.key": record.key_name,
            "llm_serve.cost_usd": record.cost_usd,
            "llm_serve.status": record.status,
        }
        if served:
            attributes[genai.RESPONSE_MODEL] = served
        if record.route != "embeddings":
            attributes[genai.OUTPUT_TOKENS] = record.completion_tokens
            attributes["llm_serve.cache"] = record.cache
        if record.cached_tokens:
            attributes["gen_ai.usage.cache_read.input_tokens"] = record.cached_tokens
        if record.prompt:
            attributes["llm_serve.prompt_version"] = record.prompt
        if record.adapter:
            attributes["llm_serve.adapter"] = record.adapter
        if record.ttft_s is not None:
            attributes["llm_serve.ttft_s"] = round(record.ttft_s, 6)
        if record.status >= 400:
            attributes[genai.ERROR_TYPE] = record.error_code or str(record.status)
            span.set_status(Status(StatusCode.ERROR, (record.error or "")[:200]))
        span.set_attributes(attributes)
        span.end()

    def _on_response(self, record: RequestRecord, payload: dict[str, Any] | None, body: Any = None) -> None:
        """Response facts for the span (id, finish reasons; content only when opted in) and the
        groundedness monitor's sample, from a complete response payload."""
        span = record.span
        if span is not None and span.is_recording() and payload:
            span.set_attributes(genai.response_attributes({k: v for k, v in payload.items() if k != "usage"}))
            if tracing.capture_content():
                if body is not None:
                    span.set_attribute(genai.INPUT_MESSAGES, genai.input_messages(record.route, body) or "")
                span.set_attribute(genai.OUTPUT_MESSAGES, genai.output_messages(payload) or "")
        if record.rag_contexts is not None and payload:
            choices = payload.get("choices") or [{}]
            answer = (choices[0].get("message") or {}).get("content")
            self.monitor.submit(
                answer,
                record.rag_contexts,
                model=record.model,
                collection=record.rag_collection or "",
                request_id=record.request_id,
                parent=span.get_span_context() if span is not None else None,
            )

    def _price(self, record: RequestRecord, hit: bool) -> float:
        price = self.config.price(record.model, record.adapter)
        if not hit:
            return price.cost(record.prompt_tokens, record.completion_tokens, record.cached_tokens)
        billing = self.config.cache.hit_billing
        if billing == "free":
            return 0.0
        if billing == "full":
            return price.cost(record.prompt_tokens, record.completion_tokens)
        return price.cost(record.prompt_tokens, 0, cached_tokens=record.prompt_tokens)

    # ---- generation -----------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, route="chat", request_cls=self.api.ChatCompletionRequest)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, route="completions", request_cls=self.api.CompletionRequest)

    async def _generate(self, request: Request, *, route: str, request_cls: type) -> Response:
        with tracing.tracer().start_as_current_span("llm_serve.auth") as auth_span:
            caller = self._caller(request)
            auth_span.set_attribute("llm_serve.key", caller.name)
        data = await self._read_json(request)
        requested = data.get("model")
        record = RequestRecord(
            request_id=_request_id(request),
            route=route,
            model=requested if isinstance(requested, str) else "",
            stream=bool(data.get("stream")),
            key_name=caller.name,
        )
        # Only a recording tracer reads the attributes: with tracing off, none are built per request.
        self._begin(record, genai.request_attributes(route, data) if tracing.enabled() else {})
        try:
            with _current(record.span):
                response = await self._generate_for(request, caller, data, record, route, request_cls)
        except OpenAIError as exc:
            if record.model:  # requests that never named a model are not worth a ledger row
                await self._account(record, exc)
            else:
                record.finish(exc.status, exc.message, exc.code)
                self._end(record)
                record.log()
            raise
        except asyncio.CancelledError:
            record.finish(499, "client disconnected")
            await asyncio.shield(self._account(record))
            raise
        except Exception as exc:  # answered as a 500 by the error handler; still one ledger row
            record.finish(500, f"{type(exc).__name__}: {exc}", "internal_error")
            await self._account(record)
            raise
        if record.finished:  # streams from an engine are accounted by _stream, before their [DONE]
            await self._account(record)
        return response

    async def _generate_for(
        self,
        request: Request,
        caller: Caller,
        data: dict[str, Any],
        record: RequestRecord,
        route: str,
        request_cls: type,
    ) -> Response:
        requested = data.get("model")
        if requested is None:
            raise OpenAIError(
                400, "you must provide a model parameter", code="missing_required_parameter", param="model"
            )
        if not isinstance(requested, str):
            raise OpenAIError(422, "model must be a string", code="invalid_type", param="model")
        rag_raw = data.pop("rag", None)
        prompt_raw = data.pop("prompt", None) if route == "chat" else None
        cache_opt = data.pop("cache", None)
        if cache_opt is not None and not isinstance(cache_opt, bool):
            raise OpenAIError(422, "cache must be true or false", code="invalid_type", param="cache")
        alias = self.config.rag_alias(requested)
        adapter = None if alias is not None or self.config.model(requested) else await self.adapters.find(requested)
        if alias is not None or adapter is not None:
            base = alias.model if alias is not None else adapter.base_model_id
            if not (caller.may_use(requested) or (adapter is not None and caller.may_use(adapter.model_id))):
                raise OpenAIError(
                    403, f"The API key '{caller.name}' may not use the model '{requested}'", code="model_not_allowed"
                )
            candidates = [base]
        else:
            candidates = route_candidates(self.config, requested, caller, data)
        record.model, record.model_known = candidates[0], True
        record.adapter = adapter.name if adapter is not None else None
        data["model"] = adapter.model_id if adapter is not None else candidates[0]
        if route != "chat" and (rag_raw is not None or alias is not None):
            raise OpenAIError(
                400, "retrieval (rag) is supported on /v1/chat/completions only", code="invalid_value", param="rag"
            )
        rag = parse_rag(rag_raw, alias, self.config)
        if prompt_raw is not None:
            name = prompt_raw.get("name") if isinstance(prompt_raw, dict) else None
            with tracing.tracer().start_as_current_span(f"prompt {name}" if name else "prompt") as span:
                record.prompt = self._apply_prompt(prompt_raw, data, caller)
                span.set_attribute("llm_serve.prompt_version", record.prompt)
        client_wants_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        if data.get("stream"):
            # Usage is always asked of the engine, so that streamed requests are counted and priced
            # like any other; the relay drops the usage chunk again if the client did not ask.
            data = {**data, "stream_options": {**(data.get("stream_options") or {}), "include_usage": True}}
        body = self._validate(request_cls, data)
        if route == "chat":
            body = _sanitize_messages(body)
        record.estimated_prompt_tokens = estimate_tokens(data)
        await self._admit(caller, record)

        extra: dict[str, Any] | None = None
        if rag is not None:
            retrieval, extra = await self._retrieve(body, rag, alias)
            self.metrics.retrieval.observe(sum(retrieval.timings_ms.values()) / 1000, {"collection": rag.collection})
            if retrieval.used and self.monitor.sample():
                record.rag_contexts = [hit.text for hit in retrieval.used]
                record.rag_collection = rag.collection
            if not retrieval.used and self.config.rag.fallback == "refuse":
                record.finish(200)
                record.cache = "none"
                payload = refusal_payload(record.model, self.config.rag.refusal_message)
                return replay(
                    payload,
                    stream=bool(body.stream),
                    include_usage=client_wants_usage,
                    headers=self._headers(record),
                    extra=extra,
                )

        bypass = cache_opt is False or "no-cache" in (request.headers.get("cache-control") or "").lower()
        deterministic = is_deterministic(body)
        cacheable = deterministic or not self.config.cache.exact.deterministic_only
        # The adapter's publish time is in the key: a retrained adapter never answers from the old one's cache.
        adapter_version = f"{record.adapter}@{adapter.metadata.get('created_at')}" if adapter is not None else None
        ctx = CacheContext(caller.name, route, record.model, adapter_version, record.prompt)
        lookup = CacheLookup(ctx=ctx, bypass=bypass, cacheable=cacheable, deterministic=deterministic)
        if bypass:
            record.cache = "bypass"
        elif cacheable:
            with tracing.tracer().start_as_current_span("llm_serve.cache_lookup") as span:
                hit = await self._cache_lookup(body, lookup, record)
                span.set_attribute("llm_serve.cache", record.cache if hit is not None else "miss")
                if lookup.similarity is not None:
                    span.set_attribute("llm_serve.cache.similarity", round(lookup.similarity, 4))
            if hit is not None:
                return self._cached_response(hit, record, body, client_wants_usage, extra, lookup)
            record.cache = "miss"
        return await self._call_engines(body, candidates, record, lookup, client_wants_usage, extra)

    def _apply_prompt(self, raw: Any, data: dict[str, Any], caller: Caller) -> str:
        """Render a registry prompt into the request: its messages first, its output schema enforced."""
        if self.prompts is None:
            raise OpenAIError(503, "no prompt registry is loaded on this server", code="prompts_unavailable")
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise OpenAIError(
                422,
                "prompt must be an object with a 'name' (and 'version' or 'alias', 'variables')",
                code="invalid_value",
                param="prompt",
            )
        variables = raw.get("variables") or {}
        if not isinstance(variables, dict):
            raise OpenAIError(422, "prompt.variables must be an object", code="invalid_type", param="prompt.variables")
        unknown = set(raw) - {"name", "version", "alias", "variables"}
        if unknown:
            raise OpenAIError(
                422, f"prompt has unknown fields: {sorted(unknown)}", code="invalid_value", param="prompt"
            )
        try:
            resolved = self.prompts.resolve(
                raw["name"],
                version=None if raw.get("version") is None else str(raw["version"]),
                alias=raw.get("alias"),
                sticky_key=data.get("user") if isinstance(data.get("user"), str) else None,
            )
            prompt = resolved.prompt
            messages = prompt.render_messages(variables)
        except PromptNotFound as exc:
            raise OpenAIError(404, str(exc), code="prompt_not_found", param="prompt") from None
        except PromptVariablesError as exc:
            raise OpenAIError(400, str(exc), code="invalid_prompt_variables", param=exc.param) from None
        except PromptError as exc:
            raise OpenAIError(400, str(exc), code="invalid_prompt", param="prompt") from None
        existing = data.get("messages") or []
        if not isinstance(existing, list):
            raise OpenAIError(422, "messages must be a list", code="invalid_type", param="messages")
        data["messages"] = [*messages, *existing]
        if prompt.output_schema is not None:
            if data.get("response_format") is not None:
                raise OpenAIError(
                    400,
                    f"prompt {prompt.ref} sets its own output schema; drop response_format",
                    code="invalid_value",
                    param="response_format",
                )
            data["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": deployment_safe(prompt.name), "schema": prompt.output_schema, "strict": True},
            }
        return prompt.ref

    # ---- caches ---------------------------------------------------------------------------------

    async def _cache_lookup(self, body: Any, lookup: CacheLookup, record: RequestRecord) -> dict[str, Any] | None:
        if self.config.cache.exact.enabled:
            lookup.exact_key = exact_key(body, lookup.ctx)
            try:
                hit = await self.state.call("cache_get", lookup.exact_key)
            except Exception as exc:  # the cache is an optimisation: trouble there is a miss
                logger.warning("exact cache lookup failed (%s: %s); treated as a miss", type(exc).__name__, exc)
                hit = None
            if hit is not None:
                record.cache = "hit"
                return hit
        if self.semantic is not None:
            parts = semantic_parts(body, lookup.ctx, self.config.cache.semantic.multi_turn)
            if parts is not None:
                lookup.scope, lookup.question = parts
                probe = await self.semantic.lookup(lookup.scope, lookup.question)
                lookup.vector = probe.vector
                if probe.hit is not None:
                    record.cache = "semantic_hit"
                    lookup.similarity = probe.hit.similarity
                    return probe.hit.payload
        return None

    def _cached_response(
        self,
        payload: dict[str, Any],
        record: RequestRecord,
        body: Any,
        include_usage: bool,
        extra: dict[str, Any] | None,
        lookup: CacheLookup,
    ) -> Response:
        payload = copy.deepcopy(payload)
        record.take_usage(payload.get("usage"))
        record.cost_usd = self._price(record, hit=True)
        if isinstance(payload.get("usage"), dict):
            payload["usage"]["cost_usd"] = record.cost_usd
        record.finish(200)
        self._on_response(record, payload, body)
        headers = self._headers(record, **{COST_HEADER: f"{record.cost_usd:.10f}"})
        if lookup.similarity is not None:
            headers[SIMILARITY_HEADER] = f"{lookup.similarity:.4f}"
        return replay(payload, stream=bool(body.stream), include_usage=include_usage, headers=headers, extra=extra)

    async def _fill(self, lookup: CacheLookup, payload: dict[str, Any] | None) -> None:
        if payload is None or lookup.bypass or not lookup.cacheable:
            return
        if not all(c.get("finish_reason") in ("stop", "length", "tool_calls") for c in payload.get("choices", [])):
            return
        payload = {k: v for k, v in payload.items() if k not in ("sources", "rag")}
        try:
            if lookup.exact_key is not None:
                await self.state.call("cache_put", lookup.exact_key, payload)
            if self.semantic is not None and lookup.scope is not None and lookup.question is not None:
                await self.semantic.store(lookup.scope, lookup.question, lookup.vector, payload)
        except Exception as exc:  # an answer already made is still delivered
            logger.warning("cache fill failed (%s: %s)", type(exc).__name__, exc)

    # ---- engines --------------------------------------------------------------------------------

    def _engine_results(self, model_id: str, route: str, body: Any, lookup: CacheLookup, record: RequestRecord) -> Any:
        handle = self.stream_engines[model_id]
        if record.adapter is not None:
            # Serve's model multiplexing sends the request to a replica holding the adapter, if any.
            handle = self.engines[model_id].options(stream=True, multiplexed_model_id=f"{model_id}:{record.adapter}")
        method = getattr(handle, route)
        info = engine_request_info(record)
        if not (self.config.cache.coalesce and lookup.deterministic and not lookup.bypass):
            return method.remote(body, info)
        key = (lookup.exact_key or exact_key(body, lookup.ctx)) + (":stream" if body.stream else ":json")
        results, joined = self.coalescer.join(key, lambda: method.remote(body, info))
        if joined:
            record.cache = "coalesced"
        return results

    async def _call_engines(
        self,
        body: Any,
        candidates: list[str],
        record: RequestRecord,
        lookup: CacheLookup,
        include_usage: bool,
        extra: dict[str, Any] | None,
    ) -> Response:
        timeout = self.config.server.request_timeout_s
        for attempt, model_id in enumerate(candidates):
            last = attempt == len(candidates) - 1
            if model_id != record.model:
                self._fall_back(body, model_id, record, lookup)
            results = self._engine_results(model_id, record.route, body, lookup, record)
            self.waiting_first += 1
            self.metrics.queued.set(self.waiting_first)
            try:
                first = await asyncio.wait_for(results.__anext__(), timeout)
            except OpenAIError:
                raise
            except StopAsyncIteration:
                if last:
                    raise OpenAIError(502, "the engine returned no response", code="engine_error") from None
                continue
            except TimeoutError:
                # The request's time is spent: no time is left to give a fallback.
                abandon(results)
                raise call_failed(record, TimeoutError(), f"the engine for '{model_id}'") from None
            except Exception as exc:
                abandon(results)
                if last:
                    raise call_failed(record, exc, f"the engine for '{model_id}'") from None
                continue
            finally:
                self.waiting_first -= 1
                self.metrics.queued.set(self.waiting_first)
            head = first[0] if isinstance(first, list) and first else first
            if is_error_response(head):
                abandon(results)
                err = from_engine_error(head)
                if err.status >= 500 and not last:
                    continue
                raise err
            break
        if body.stream:
            record.ttft_s = time.monotonic() - record.started
            if record.span is not None:
                record.span.add_event(genai.FIRST_TOKEN_EVENT)
        if not body.stream:
            payload = head.model_dump(mode="json", exclude_none=False)
            self._on_response(record, payload, body)
            record.take_usage(payload.get("usage"))
            coalesced = record.cache == "coalesced"
            record.cost_usd = self._price(record, hit=coalesced)
            if not coalesced:
                await self._fill(lookup, payload)
            if isinstance(payload.get("usage"), dict):
                payload["usage"]["cost_usd"] = record.cost_usd
            record.finish(200)
            if extra:
                payload.update(extra)
            return JSONResponse(payload, headers=self._headers(record, **{COST_HEADER: f"{record.cost_usd:.10f}"}))
        fill = lookup.cacheable and not lookup.bypass and record.cache != "coalesced"
        # The monitor and content capture need the answer's text; collecting is off otherwise.
        keep = fill or record.rag_contexts is not None or tracing.capture_content()
        relay = StreamRelay(
            first,
            results,
            keep_usage_chunk=include_usage,
            deadline_s=timeout,
            final_extra=extra,
            on_usage=lambda usage: {"cost_usd": self._stream_cost(record, usage)},
            collect=keep,
            track_finish=tracing.enabled(),
        )

        async def settle() -> None:
            """The request's accounting when its body never ran to the end (or never started at all)."""
            if record.accounted:
                return
            abandon(relay.upstream)
            if not record.finished:
                record.finish(499, "client disconnected", "client_disconnected")
            self._settle_stream(relay, record)
            await self._account(record)

        return SettledStreamingResponse(
            self._stream(relay, record, lookup if fill else None, body),
            settle=settle,
            media_type="text/event-stream",
            headers={**self._headers(record), "cache-control": "no-cache"},
        )

    def _fall_back(self, body: Any, model_id: str, record: RequestRecord, lookup: CacheLookup) -> None:
        """Point the request at the next pool; its cache coordinates follow, so no answer lands in the
        first pool's entries."""
        logger.warning("request %s: falling back from %s to %s", record.request_id, record.model, model_id)
        record.model = model_id
        if record.cache == "coalesced":  # this attempt is its own engine call
            record.cache = "miss"
        body.model = model_id
        lookup.ctx = CacheContext(**{**lookup.ctx.__dict__, "model": model_id})
        lookup.exact_key = exact_key(body, lookup.ctx) if self.config.cache.exact.enabled else None
        lookup.scope = lookup.question = lookup.vector = None

    def _stream_cost(self, record: RequestRecord, usage: dict[str, Any]) -> float:
        record.take_usage(usage)
        record.cost_usd = self._price(record, hit=record.cache == "coalesced")
        return record.cost_usd

    async def _retrieve(self, body: Any, rag: RagRequest, alias: RagAlias | None) -> tuple[Retrieval, dict[str, Any]]:
        """Search the knowledge base and ground the conversation; returns what the response reports."""
        if self.rag_prompt is None:
            raise OpenAIError(503, "retrieval is not configured on this server", code="rag_unavailable")
        retrieval = await self.retriever.retrieve(question_of(body.messages), rag)
        fallback = None
        if retrieval.used:
            body.messages = grounded_messages(
                self.rag_prompt, retrieval, list(body.messages), self.config.rag.max_context_chars
            )
        else:
            fallback = "refused" if self.config.rag.fallback == "refuse" else "generated_without_context"
        info = {
            "collection": retrieval.collection,
            "alias": alias.id if alias else None,
            "prompt": self.rag_prompt.ref,
            "retrieved": len(retrieval.hits),
            "used": len(retrieval.used),
            "score_threshold": self.config.rag.score_threshold,
            "fallback": fallback,
            "timings_ms": {k: round(v, 1) for k, v in retrieval.timings_ms.items()},
        }
        return retrieval, {"sources": retrieval.sources(rag.include_text), "rag": info}

    async def _stream(
        self, relay: StreamRelay, record: RequestRecord, lookup: CacheLookup | None, body: Any = None
    ) -> AsyncIterator[str]:
        """Relay the engine's events; the ledger row is written before the final [DONE] goes out.

        A stream that ends early (client gone, engine failure, timeout) is still recorded and priced:
        without the engine's usage chunk, output tokens are the events relayed and the prompt is
        estimated from its length.
        """
        completed = False
        try:
            async for text in relay:
                if text == DONE_EVENT:
                    break
                yield text
            completed = True
        except Exception as exc:
            logger.exception("stream %s failed", record.request_id)
            record.finish(500, type(exc).__name__)
            err = OpenAIError(500, f"the stream failed ({type(exc).__name__})", code="engine_error")
            self._settle_stream(relay, record)
            await self._account(record)
            yield sse(err.body()) + DONE_EVENT
            return
        finally:
            if not completed and not record.accounted:
                # The client went away (cancelled, or the generator closed mid-yield).
                abandon(relay.upstream)
                if not record.finished:
                    record.finish(499, "client disconnected")
                self._settle_stream(relay, record)
                await asyncio.shield(self._account(record))
        if relay.timed_out:
            abandon(relay.upstream)
        status = (504 if relay.timed_out else 500) if relay.error else 200
        record.finish(status, relay.error, ("timeout" if relay.timed_out else "engine_error") if relay.error else None)
        self._settle_stream(relay, record)
        assembled = assemble(relay.events, record.route) if relay.events is not None and not relay.error else None
        if record.span is not None:
            if relay.finish_reasons:
                record.span.set_attribute(genai.FINISH_REASONS, relay.finish_reasons)
            if relay.response_id:
                record.span.set_attribute(genai.RESPONSE_ID, relay.response_id)
            if assembled is not None:
                self._on_response(record, assembled, body)
        await self._account(record)
        if lookup is not None and assembled is not None:
            await self._fill(lookup, assembled)
        yield DONE_EVENT

    def _settle_stream(self, relay: StreamRelay, record: RequestRecord) -> None:
        if relay.usage:
            record.take_usage(relay.usage)
        else:
            record.prompt_tokens = record.prompt_tokens or record.estimated_prompt_tokens
            record.completion_tokens = relay.content_events
            record.error = f"{record.error}; tokens estimated" if record.error else "tokens estimated"
        record.cost_usd = self._price(record, hit=record.cache == "coalesced")


class AdapterCatalog:
    """The router's view of the adapter registries of LoRA-enabled pools, refreshed every `refresh_s`.

    Read here, in the router, so an unknown adapter is a 404 before any engine is bothered, and a
    newly published adapter is servable within `refresh_s` without a restart.
    """

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools = {m.id: m for m in config.models if m.lora.enabled}
        self._registries = {
            root: AdapterRegistry(root) for root in {config.adapter_registry(m) for m in self.pools.values()}
        }
        self._listing: dict[str, AdapterInfo] = {}
        self._listed_at = -1e18
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        refresh = min((m.lora.refresh_s for m in self.pools.values()), default=0.0)
        if time.monotonic() - self._listed_at < refresh:
            return
        async with self._lock:
            if time.monotonic() - self._listed_at < refresh:
                return
            listing: dict[str, AdapterInfo] = {}
            try:
                for root, registry in self._registries.items():
                    for info in await asyncio.to_thread(registry.list):
                        pool = self.pools.get(info.base_model_id)
                        if pool is not None and self.config.adapter_registry(pool) == root:
                            listing[info.model_id] = info
            except OSError as exc:  # keep serving what was known; a storage blip is not a mass 404
                logger.warning("adapter registry listing failed (%s); keeping the last one", exc)
                self._listed_at = time.monotonic()
                return
            self._listing, self._listed_at = listing, time.monotonic()

    async def all(self) -> list[AdapterInfo]:
        if not self.pools:
            return []
        await self._refresh()
        return list(self._listing.values())

    async def find(self, model_id: str) -> AdapterInfo | None:
        """`<base>:<adapter>`, or an adapter's bare name when exactly one pool has it."""
        if not self.pools:
            return None
        await self._refresh()
        if model_id in self._listing:
            return self._listing[model_id]
        base, sep, name = model_id.rpartition(":")
        if sep and base in self.pools:
            if time.monotonic() - self._listed_at >= FORCED_RELIST_S:
                self._listed_at = -1e18  # maybe just published: look again (at most once a second)
                await self._refresh()
            if model_id in self._listing:
                return self._listing[model_id]
            raise OpenAIError(
                404, f"The adapter '{name}' of model '{base}' does not exist", code="model_not_found", param="model"
            )
        named = [info for info in self._listing.values() if info.name == model_id]
        return named[0] if len(named) == 1 else None


class SettledStreamingResponse(StreamingResponse):
    """A streamed response that always settles its request (ledger row, span, gauges).

    The relay generator accounts for itself when it runs, but Starlette may never start it: the
    client can vanish, or the task be cancelled, between the response head and the first body chunk,
    and a generator that never started runs no `finally`. So the response closes its body iterator
    and calls `settle` after sending, however sending ended.
    """

    def __init__(self, content: Any, *, settle: Any, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._settle = settle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with contextlib.suppress(Exception):
                await self.body_iterator.aclose()  # type: ignore[union-attr]
            await asyncio.shield(self._settle())


@dataclass
class CacheLookup:
    """One request's cache coordinates, carried from lookup to fill."""

    ctx: CacheContext
    bypass: bool
    cacheable: bool
    deterministic: bool = False
    exact_key: str | None = None
    scope: str | None = None
    question: str | None = None
    vector: list[float] | None = None
    similarity: float | None = None


def abandon(results: Any) -> None:
    """Stop an engine call nobody will read (frees the engine's slot instead of generating for no one)."""
    cancel = getattr(results, "cancel", None)
    if callable(cancel):
        cancel()
        return
    close = getattr(results, "aclose", None)
    if callable(close):
        asyncio.get_running_loop().create_task(close())


def _request_id(request: Request) -> str:
    return request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex


def call_failed(record: RequestRecord, exc: Exception, what: str) -> OpenAIError:
    """The client's answer when a call to a deployment times out (504) or fails (503); recorded and logged."""
    if isinstance(exc, TimeoutError):
        record.finish(504, "timeout", "timeout")
        return OpenAIError(504, f"no response from {what} in time", code="timeout")
    record.finish(503, type(exc).__name__, "engine_unavailable")
    logger.error("call to %s failed for %s: %s: %s", what, record.request_id, type(exc).__name__, exc)
    return OpenAIError(503, f"{what} is unavailable ({type(exc).__name__})", code="engine_unavailable")


def is_error_response(obj: Any) -> bool:
    """vLLM's and Ray Serve LLM's ErrorResponse classes differ; both carry `.error.message`."""
    return not isinstance(obj, str) and hasattr(getattr(obj, "error", None), "message")


def _sanitize_messages(body: Any) -> Any:
    """Materialize pydantic's lazy iterators in messages so the request pickles across the Ray handle."""
    from ray.llm._internal.serve.core.ingress.utils import _sanitize_chat_completion_request

    try:
        return _sanitize_chat_completion_request(body)
    except ValueError as exc:
        raise OpenAIError(422, str(exc), code="invalid_value", param="messages") from None


def _current(span: Span | None) -> Any:
    """Make `span` the current one for a block (children nest under it) without ending it on exit."""
    if span is None:
        return contextlib.nullcontext()
    # A 4xx is an answer, not a crash: the request's status (set in _end) says how it ended.
    return trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False)


def engine_request_info(record: RequestRecord) -> Any:
    """What travels with an engine call besides the request: the trace context, as LLMServer's
    RawRequestInfo headers (None when there is nothing to carry)."""
    if record.span is None or not record.span.is_recording():
        return None
    headers = tracing.carrier(record.span)
    if not headers:
        return None
    from ray.llm._internal.serve.core.protocol import RawRequestInfo

    return RawRequestInfo(headers=headers)
