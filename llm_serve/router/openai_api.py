"""The OpenAI-compatible ingress: /v1/models, /v1/chat/completions, /v1/completions, health.

`Router` is a plain class (constructible without Ray, given engine handles) that builds its own
FastAPI app; app.py turns it into a Serve ingress deployment. Requests are validated here with vLLM's
own protocol models, so the router rejects bad input before it costs an engine call and the engine
receives exactly the objects Ray Serve LLM's LLMServer expects.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_serve.config import Config, EmbedderConfig, ModelConfig, RagAlias
from llm_serve.prompts.template import PromptTemplate
from llm_serve.rag.retriever import RagRequest, Retrieval, Retriever, grounded_messages, parse_rag, question_of
from llm_serve.router.body_limit import BodySizeLimit
from llm_serve.router.embeddings import embedding_response, parse_embedding_request
from llm_serve.router.errors import OpenAIError, from_engine_error, install_error_handlers, invalid_body
from llm_serve.router.sse import DONE_EVENT, StreamRelay, refusal_response, sse

logger = logging.getLogger("llm_serve.router")

READY_CHECK_TIMEOUT_S = 5.0
REQUEST_ID_HEADER = "x-request-id"


@dataclass
class RequestRecord:
    """What one request cost and how it ended; the ledger and metrics build on this."""

    request_id: str
    route: str
    model: str
    stream: bool
    started: float = field(default_factory=time.monotonic)
    status: int = 200
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None

    def finish(self, status: int | None = None, error: str | None = None) -> None:
        if status is not None:
            self.status = status
        self.error = error
        latency_ms = (time.monotonic() - self.started) * 1000
        logger.info(
            "request %s route=%s model=%s stream=%s status=%d prompt_tokens=%d completion_tokens=%d latency_ms=%.1f%s",
            self.request_id,
            self.route,
            self.model,
            self.stream,
            self.status,
            self.prompt_tokens,
            self.completion_tokens,
            latency_ms,
            f" error={error}" if error else "",
        )


def _protocol() -> Any:
    # Imported lazily: it pulls in vLLM, which unit tests of config or CLI do not need.
    from ray.serve.llm import openai_api_models

    return openai_api_models


class Router:
    """Validates OpenAI requests, picks the engine pool by model id, relays results back."""

    def __init__(
        self,
        config: dict[str, Any] | Config,
        engines: dict[str, Any],
        embedders: dict[str, Any] | None = None,
        prompts: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        self.config = config if isinstance(config, Config) else Config.model_validate(config)
        self.engines = engines
        self.embedders = embedders or {}
        rag_prompt = (prompts or {}).get("rag")
        self.rag_prompt = PromptTemplate.from_dict(rag_prompt) if rag_prompt else None
        self.retriever = Retriever(self.config, self.embedders)
        self.stream_engines = {mid: h.options(stream=True) for mid, h in engines.items()}
        self.created = int(time.time())
        self.api = _protocol()

    # ---- ASGI app -------------------------------------------------------------------------------

    async def __serve_build_asgi_app__(self) -> FastAPI:
        return self.build_asgi_app()

    def build_asgi_app(self) -> FastAPI:
        app = FastAPI(title="llm-serve", version="0.1.0", docs_url="/docs", redoc_url=None)
        install_error_handlers(app)
        app.add_middleware(BodySizeLimit, max_bytes=self.config.server.max_body_bytes)
        app.add_api_route("/healthz", self.healthz, methods=["GET"])
        app.add_api_route("/readyz", self.readyz, methods=["GET"])
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model_id:path}", self.get_model, methods=["GET"])
        app.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        app.add_api_route("/v1/completions", self.completions, methods=["POST"])
        app.add_api_route("/v1/embeddings", self.embeddings, methods=["POST"])
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

    async def list_models(self) -> dict[str, Any]:
        models = [
            *self.config.models,
            *self.config.rag.aliases,
            *(m for m in self.config.embedding_models if m.id in self.embedders),
        ]
        return {"object": "list", "data": [self._model_card(m) for m in models]}

    async def get_model(self, model_id: str) -> dict[str, Any]:
        model = (
            self.config.model(model_id)
            or self.config.rag_alias(model_id)
            or (self.config.embedder(model_id) if model_id in self.embedders else None)
        )
        if model is None:
            raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
        return self._model_card(model)

    # ---- generation -----------------------------------------------------------------------------

    async def chat_completions(self, request: Request) -> Response:
        return await self._generate(request, route="chat", request_cls=self.api.ChatCompletionRequest)

    async def completions(self, request: Request) -> Response:
        return await self._generate(request, route="completions", request_cls=self.api.CompletionRequest)

    async def embeddings(self, request: Request) -> Response:
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
        body, texts = parse_embedding_request(data, config.max_inputs_per_request)
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        record = RequestRecord(request_id=request_id, route="embeddings", model=model_id, stream=False)
        try:
            result = await asyncio.wait_for(
                self.embedders[model_id].embed.remote(texts), self.config.server.request_timeout_s
            )
        except Exception as exc:
            raise call_failed(record, exc, f"the embedding model '{model_id}'") from None
        if result.error:
            record.finish(400, result.error)
            raise OpenAIError(400, result.error, code="context_length_exceeded", param=result.error_param)
        if body.dimensions is not None and body.dimensions != result.vectors.shape[1]:
            record.finish(400, "dimensions")
            raise OpenAIError(
                400,
                f"'{model_id}' produces {result.vectors.shape[1]}-dimensional vectors; "
                f"dimensions={body.dimensions} is not supported",
                code="invalid_value",
                param="dimensions",
            )
        record.prompt_tokens = result.prompt_tokens
        record.finish(200)
        payload = embedding_response(model_id, result.vectors, result.prompt_tokens, body.encoding_format)
        return JSONResponse(payload, headers={REQUEST_ID_HEADER: request_id})

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

    def _resolve_model(self, data: dict[str, Any]) -> str:
        model_id = data.get("model")
        if model_id is None:
            raise OpenAIError(
                400, "you must provide a model parameter", code="missing_required_parameter", param="model"
            )
        if not isinstance(model_id, str):
            raise OpenAIError(422, "model must be a string", code="invalid_type", param="model")
        if model_id not in self.engines:
            raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
        return model_id

    def _validate(self, request_cls: type, data: dict[str, Any]) -> Any:
        try:
            return request_cls.model_validate(data)
        except ValidationError as exc:
            raise invalid_body(exc.errors()) from None
        except ValueError as exc:  # vLLM's own model validators raise plain ValueError
            raise OpenAIError(400, str(exc), code="invalid_value") from None

    async def _generate(self, request: Request, *, route: str, request_cls: type) -> Response:
        data = await self._read_json(request)
        requested_model = data.get("model")
        alias = self.config.rag_alias(requested_model) if isinstance(requested_model, str) else None
        rag_raw = data.pop("rag", None)
        if alias is not None:
            data["model"] = alias.model
        model_id = self._resolve_model(data)
        if route != "chat" and (rag_raw is not None or alias is not None):
            raise OpenAIError(
                400, "retrieval (rag) is supported on /v1/chat/completions only", code="invalid_value", param="rag"
            )
        rag = parse_rag(rag_raw, alias, self.config)
        request_id = request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex
        client_wants_usage = bool((data.get("stream_options") or {}).get("include_usage"))
        if data.get("stream"):
            # Usage is always asked of the engine, so that streamed requests are counted (and later
            # priced) like any other; the relay drops the usage chunk again if the client did not ask.
            data = {**data, "stream_options": {**(data.get("stream_options") or {}), "include_usage": True}}
        body = self._validate(request_cls, data)
        if route == "chat":
            body = _sanitize_messages(body)
        record = RequestRecord(request_id=request_id, route=route, model=model_id, stream=bool(body.stream))
        headers = {REQUEST_ID_HEADER: request_id}
        extra: dict[str, Any] | None = None
        if rag is not None:
            retrieval, extra = await self._retrieve(body, rag, alias)
            if not retrieval.used and self.config.rag.fallback == "refuse":
                record.finish(200)
                return refusal_response(
                    body, model_id, self.config.rag.refusal_message, extra, client_wants_usage, headers
                )
        timeout = self.config.server.request_timeout_s
        method = getattr(self.stream_engines[model_id], route)
        try:
            results = method.remote(body, None)
            first = await asyncio.wait_for(results.__anext__(), timeout)
        except OpenAIError as exc:
            record.finish(exc.status, exc.message)
            raise
        except StopAsyncIteration:
            record.finish(502, "empty engine response")
            raise OpenAIError(502, "the engine returned no response", code="engine_error") from None
        except Exception as exc:
            raise call_failed(record, exc, f"the engine for '{model_id}'") from None

        head = first[0] if isinstance(first, list) and first else first
        if is_error_response(head):
            err = from_engine_error(head)
            record.finish(err.status, err.message)
            raise err
        if not body.stream:
            payload = head.model_dump(mode="json", exclude_none=False)
            usage = payload.get("usage") or {}
            record.prompt_tokens = usage.get("prompt_tokens") or 0
            record.completion_tokens = usage.get("completion_tokens") or 0
            record.finish(200)
            if extra:
                payload.update(extra)
            return JSONResponse(payload, headers=headers)
        relay = StreamRelay(first, results, keep_usage_chunk=client_wants_usage, deadline_s=timeout, final_extra=extra)
        return StreamingResponse(
            self._stream(relay, record),
            media_type="text/event-stream",
            headers={**headers, "cache-control": "no-cache"},
        )

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
        return retrieval, {"sources": retrieval.sources(), "rag": info}

    async def _stream(self, relay: StreamRelay, record: RequestRecord) -> AsyncIterator[str]:
        try:
            async for text in relay:
                yield text
        except asyncio.CancelledError:
            record.finish(499, "client disconnected")
            raise
        except Exception as exc:
            logger.exception("stream %s failed", record.request_id)
            record.finish(500, type(exc).__name__)
            err = OpenAIError(500, f"the stream failed ({type(exc).__name__})", code="engine_error")
            yield sse(err.body()) + DONE_EVENT
            return
        if relay.usage:
            record.prompt_tokens = relay.usage.get("prompt_tokens") or 0
            record.completion_tokens = relay.usage.get("completion_tokens") or 0
        record.finish(500 if relay.error else 200, relay.error)


def call_failed(record: RequestRecord, exc: Exception, what: str) -> OpenAIError:
    """The client's answer when a call to a deployment times out (504) or fails (503); recorded and logged."""
    if isinstance(exc, TimeoutError):
        record.finish(504, "timeout")
        return OpenAIError(504, f"no response from {what} in time", code="timeout")
    record.finish(503, type(exc).__name__)
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
