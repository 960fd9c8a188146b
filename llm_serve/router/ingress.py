"""The router's HTTP application: its parts built from the config, wired together, behind FastAPI.

Assembly only, as vLLM's `api_server.py` is: what a request goes through lives in pipeline.py (the
order of the generation path) and the stage modules, the other routes in modules of their own
(model_cards.py, embeddings.py, admin.py). `Router` is a plain class, constructible without Ray
given engine handles, so the whole HTTP contract is testable with stand-in engines; app.py turns it
into a Serve ingress deployment.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llm_serve import headers as h
from llm_serve.config import Config, is_loopback
from llm_serve.eval.groundedness import GroundednessMonitor
from llm_serve.eval.toxicity_monitor import ToxicityMonitor
from llm_serve.prompts import PromptRegistry
from llm_serve.prompts.template import PromptTemplate
from llm_serve.rag.milvus_server import milvus_uri
from llm_serve.rag.retriever import Retriever
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.admin import AdminRoutes
from llm_serve.router.alias_routes import AliasRoutes
from llm_serve.router.apis.anthropic_route import MessagesRoute
from llm_serve.router.apis.responses_route import ResponsesRoute
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.batches.routes import BatchesRoute, FilesRoute
from llm_serve.router.batches.runner import Answer, BatchRunner
from llm_serve.router.batches.store import BatchStore
from llm_serve.router.body_limit import BodySizeLimit
from llm_serve.router.coalesce import Coalescer
from llm_serve.router.embeddings import EmbeddingsRoute
from llm_serve.router.errors import OpenAIError, install_error_handlers
from llm_serve.router.feedback import FeedbackRoute
from llm_serve.router.guardrails import GuardInput, Guardrails
from llm_serve.router.model_cards import ModelCards
from llm_serve.router.observe import Observer
from llm_serve.router.openapi import install_request_schemas
from llm_serve.router.pipeline import GenerationPipeline
from llm_serve.router.prompt_tokens import PromptTokens
from llm_serve.router.providers.pool import build_upstream_pools
from llm_serve.router.semantic_cache import SemanticCache
from llm_serve.router.served_aliases import AliasCache
from llm_serve.router.stages.admit import Admit
from llm_serve.router.stages.cache import Cache
from llm_serve.router.stages.dispatch import Dispatch
from llm_serve.router.stages.limits import Limits
from llm_serve.router.stages.parse import Parse
from llm_serve.router.stages.prompt import RenderPrompt
from llm_serve.router.stages.resolve import Resolve
from llm_serve.router.stages.respond import Respond
from llm_serve.router.stages.retrieve import Retrieve
from llm_serve.router.stages.settle import Settler
from llm_serve.router.stages.validate import Validate
from llm_serve.router.state import RouterState, StateClient
from llm_serve.telemetry import tracing
from llm_serve.telemetry.http import TracingMiddleware
from llm_serve.telemetry.metrics import ServingMetrics

logger = logging.getLogger("llm_serve.router")

READY_CHECK_TIMEOUT_S = 5.0


class Router:
    """Authenticates, limits, renders prompts, caches, coalesces and routes OpenAI requests to engine pools."""

    def __init__(
        self,
        config: dict[str, Any] | Config,
        engines: dict[str, Any],
        embedders: dict[str, Any] | None = None,
        prompts: dict[str, Any] | None = None,
        state: Any = None,
        model_sources: dict[str, str] | None = None,
    ) -> None:
        self.config = config = config if isinstance(config, Config) else Config.model_validate(config)
        self.engines = engines
        # API pools live in this replica: an HTTP client each, called like an engine handle.
        self.upstreams = build_upstream_pools(config.provider_models, config.server.request_timeout_s)
        pools = {**engines, **self.upstreams}
        self.embedders = embedders = embedders or {}
        prompts = prompts or {}
        tracing.setup_tracing(config.telemetry.tracing, "router")
        if not config.auth.keys and not is_loopback(config.server.host):
            logger.warning(
                "SERVING %s WITHOUT API KEYS (server.allow_unauthenticated): anyone who can connect may use "
                "every model and spend without limit; admin routes stay closed",
                config.server.host,
            )

        self.keys = KeyRing(config.auth)
        self.state = StateClient(state if state is not None else RouterState(config), config.router.state_timeout_s)
        self.adapters = AdapterCatalog(config)
        self.coalescer = Coalescer(config.server.request_timeout_s, config.server.billing_grace_s)
        metrics = ServingMetrics(config.telemetry.metrics)
        self.observer = Observer(
            metrics,
            GroundednessMonitor(config.telemetry.groundedness, metrics),
            ToxicityMonitor(config.telemetry.toxicity, metrics),
        )
        guardrails = Guardrails(config, metrics)
        self.settle = Settler(config, self.state, self.observer)
        templates = {m.id: path for m in config.models if (path := m.tools.template_path()) is not None}
        prompt_tokens = PromptTokens(model_sources or {}, config.router.prompt_overhead_tokens, templates)
        admit = Admit(config, self.state, prompt_tokens)
        cache = Cache(config, self.state, self._semantic_cache(), self.observer, guardrails)
        rag_prompt = PromptTemplate.from_dict(prompts["rag"]) if prompts.get("rag") else None
        registry = PromptRegistry.from_dict(prompts["registry"]) if prompts.get("registry") else None
        self.served_aliases = (
            AliasCache(self.state.aliases, config.promotion.refresh_s)
            if config.promotion.enabled and config.ledger.enabled
            else None
        )
        resolve = Resolve(config, self.adapters, self.served_aliases)
        # The order of the generation path, and why, is written in pipeline.py's docstring.
        self.pipeline = GenerationPipeline(
            [
                ("parse", Parse()),
                ("resolve", resolve),
                ("guard_input", GuardInput(guardrails)),
                ("render_prompt", RenderPrompt(registry)),
                ("validate", Validate()),
                ("limits", Limits(config)),
                ("admit", admit),
                ("retrieve", Retrieve(config, Retriever(config, embedders), rag_prompt, self.observer)),
                ("cache_lookup", cache),
                ("dispatch", Dispatch(config, pools, self.coalescer, self.observer)),
                ("respond", Respond(config, cache, self.observer, self.settle, guardrails)),
            ],
            keys=self.keys,
            max_body_bytes=config.server.max_body_bytes,
            max_inflight=config.router.max_inflight_requests,
            observer=self.observer,
            settle=self.settle,
        )
        self.embeddings_route = EmbeddingsRoute(
            config, embedders, set(pools), keys=self.keys, admit=admit, observer=self.observer, settle=self.settle
        )
        self.model_cards = ModelCards(config, embedders, self.adapters, self.keys)
        self.admin = AdminRoutes(config, self.keys, self.state, self.coalescer)
        self.feedback = FeedbackRoute(config, self.keys, self.state, metrics)
        self.alias_routes = (
            AliasRoutes(config, self.admin, self.state, self.adapters, registry, self.served_aliases)
            if self.served_aliases is not None
            else None
        )
        self.responses = ResponsesRoute(config, self.pipeline, self.keys)
        self.messages = MessagesRoute(config, self.pipeline, self.keys, resolve, prompt_tokens)
        batch = config.batch
        self.batch_store = BatchStore(batch.store_url or config.ledger.database_url(config.home_path))
        self.batch_runner = BatchRunner(
            batch, self.batch_store, self.run_internal, self.keys.caller_named, self._interactive_inflight
        )
        self.files_route = FilesRoute(batch, self.batch_store, self.keys)
        self.batches_route = BatchesRoute(
            batch, self.batch_store, self.keys, self.batch_runner, config.server.max_body_bytes
        )

    def _interactive_inflight(self) -> int:
        return sum(self.observer.ongoing.values()) - self.batch_runner.inflight

    async def run_internal(
        self, route: str, caller: Caller, body: dict[str, Any], request_id: str, price_factor: float
    ) -> Answer:
        """One request answered by this replica's own path, as `caller`, without HTTP (the batch runner's)."""
        raw = json.dumps(body).encode()
        scope = {
            "type": "http",
            "method": "POST",
            "path": "/internal",
            "headers": [(b"content-type", b"application/json"), (h.REQUEST_ID.encode(), request_id.encode())],
            "query_string": b"",
        }
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.Event().wait()  # no disconnect: the runner waits for its answer
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        request = Request(scope, receive)
        try:
            if route == "embeddings":
                response = await self.embeddings_route.answer(
                    request, caller=caller, api="batch", price_factor=price_factor
                )
            else:
                response = await self.pipeline.handle(
                    request, route, api="batch", caller=caller, price_factor=price_factor
                )
        except OpenAIError as exc:
            return Answer(exc.status, exc.body(), request_id, 0.0)
        if not hasattr(response, "body"):  # a stream: batch bodies have `stream` removed, so never
            raise RuntimeError("a batch request was answered as a stream")
        payload = json.loads(bytes(response.body)) if response.body else {}
        cost = float(response.headers.get(h.COST, 0.0) or 0.0)
        return Answer(response.status_code, payload, response.headers.get(h.REQUEST_ID, request_id), cost)

    def _semantic_cache(self) -> SemanticCache | None:
        semantic = self.config.cache.semantic
        if not semantic.enabled or semantic.embedding_model not in self.embedders:
            return None
        return SemanticCache(
            semantic, self.config.rag.milvus, milvus_uri(self.config), self.embedders[semantic.embedding_model]
        )

    # ---- ASGI app -------------------------------------------------------------------------------

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return self.build_asgi_app()

    def build_asgi_app(self) -> FastAPI:
        app = FastAPI(title="llm-serve", version="0.1.0", docs_url="/docs", redoc_url=None, lifespan=self._lifespan)
        install_error_handlers(app)
        uploads = {"/v1/files": self.config.batch.max_file_bytes} if self.config.batch.enabled else {}
        app.add_middleware(BodySizeLimit, max_bytes=self.config.server.max_body_bytes, per_path=uploads)
        app.add_middleware(TracingMiddleware)  # outermost: a refused body is a traced request too
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/readyz", self.readyz, methods=["GET"])
        self.model_cards.install(app)
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/embeddings", self.embeddings_route.handle, methods=["POST"])
        if self.config.responses.enabled:
            self.responses.install(app)
        if self.config.anthropic.enabled:
            self.messages.install(app)
        if self.config.batch.enabled:
            self.files_route.install(app)
            self.batches_route.install(app)
        self.feedback.install(app)
        self.admin.install(app)
        if self.alias_routes is not None:
            self.alias_routes.install(app)
        install_request_schemas(app)
        return app

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: FastAPI) -> AsyncIterator[None]:
        """Serve runs the app's lifespan in each replica: its batch runner lives as long as the replica."""
        if self.config.batch.enabled:
            self.batch_runner.start()
        try:
            yield
        finally:
            await self.batch_runner.stop()
            for upstream in self.upstreams.values():
                await upstream.aclose()

    async def chat_completions(self, request: Request) -> Response:
        return await self.pipeline.handle(request, "chat")

    async def completions(self, request: Request) -> Response:
        return await self.pipeline.handle(request, "completions")

    # ---- health ---------------------------------------------------------------------------------

    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    async def readyz(self) -> JSONResponse:
        """Ready when this application's own pools answer; an API pool's upstream is outside it (its
        breaker and the fallbacks deal with an upstream that is down) and does not make the router unready."""
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
