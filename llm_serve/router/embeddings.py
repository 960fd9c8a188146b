"""POST /v1/embeddings: OpenAI's request and response shapes over the embedding deployment.

A short path of its own, sharing the generation path's admission and settlement: auth, parse,
model check, admit, embed, price, settle (in a `finally`, as for generation).
"""

from __future__ import annotations

import asyncio
import base64
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from llm_serve.config import Config
from llm_serve.rag.embedder import embed_remote
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, invalid_body
from llm_serve.router.observe import Observer
from llm_serve.router.stages.admit import Admit
from llm_serve.router.stages.dispatch import call_failed
from llm_serve.router.stages.limits import limits_for
from llm_serve.router.stages.parse import read_json
from llm_serve.router.stages.settle import Settler, settled
from llm_serve.telemetry import genai


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request. Token-array input is refused: each model has its own tokenizer."""

    model_config = ConfigDict(extra="allow")

    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    user: str | None = None


def parse_embedding_request(
    data: dict[str, Any], max_inputs: int, max_chars: int | None = None
) -> tuple[EmbeddingRequest, list[str]]:
    """Validate the body and return the texts; every refusal names the field, as OpenAI does."""
    try:
        request = EmbeddingRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    texts = [request.input] if isinstance(request.input, str) else request.input
    if not texts:
        raise OpenAIError(400, "input must not be empty", code="invalid_value", param="input")
    if not all(isinstance(t, str) for t in texts):
        raise OpenAIError(400, "token-array input is not supported; send the text", code="invalid_value", param="input")
    empty = [i for i, t in enumerate(texts) if not t.strip()]
    if empty:
        raise OpenAIError(400, f"input[{empty[0]}] is empty", code="invalid_value", param="input")
    if len(texts) > max_inputs:
        raise OpenAIError(
            400, f"{len(texts)} inputs in one request; at most {max_inputs}", code="invalid_value", param="input"
        )
    if max_chars is not None and (longest := max(len(t) for t in texts)) > max_chars:
        raise OpenAIError(
            400, f"an input of {longest} characters; at most {max_chars}", code="limit_exceeded", param="input"
        )
    return request, texts


def embedding_response(model_id: str, vectors: np.ndarray, prompt_tokens: int, encoding_format: str) -> dict[str, Any]:
    def encode(row: np.ndarray) -> list[float] | str:
        if encoding_format == "base64":
            return base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")
        return row.tolist()

    return {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": encode(row)} for i, row in enumerate(vectors)],
        "model": model_id,
        "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
    }


class EmbeddingsRoute:
    def __init__(
        self,
        config: Config,
        embedders: dict[str, Any],
        chat_models: set[str],
        *,
        keys: KeyRing,
        admit: Admit,
        observer: Observer,
        settle: Settler,
    ) -> None:
        self.config = config
        self.embedders = embedders
        self.chat_models = chat_models
        self.keys = keys
        self.admit = admit
        self.observer = observer
        self.settle = settle

    async def handle(self, request: Request) -> Response:
        return await self.answer(request)

    async def answer(
        self, request: Request, *, caller: Caller | None = None, api: str = "openai", price_factor: float = 1.0
    ) -> Response:
        """Answer one request; the batch runner passes the batch's caller, `api` and discount (not as
        `handle`'s parameters: FastAPI would read those as query parameters)."""
        self.observer.check_capacity(self.config.router.max_inflight_requests)
        caller = caller or self.keys.caller(request.headers)
        data = await read_json(request, self.config.server.max_body_bytes)
        model_id = self._model(data, caller)
        caps = limits_for(self.config, caller)
        max_inputs = self.config.embedder(model_id).max_inputs_per_request
        if caps.max_embedding_inputs is not None:
            max_inputs = min(max_inputs, caps.max_embedding_inputs)
        body, texts = parse_embedding_request(data, max_inputs, caps.max_embedding_input_chars)
        ctx = RequestContext.start("embeddings", caller, request.headers, data)
        ctx.row.stream, ctx.model_known = False, True
        ctx.row.api, ctx.price_factor = api, price_factor
        self.observer.begin(ctx, {genai.OPERATION: "embeddings", genai.REQUEST_MODEL: model_id})
        return await settled(ctx, self.settle, lambda: self._embed(ctx, model_id, body, texts))

    def _model(self, data: dict[str, Any], caller: Caller) -> str:
        model_id = data.get("model")
        if not isinstance(model_id, str) or not model_id:
            raise OpenAIError(
                400, "you must provide a model parameter", code="missing_required_parameter", param="model"
            )
        if self.config.embedder(model_id) is None or model_id not in self.embedders:
            hint = " (it is a chat model)" if model_id in self.chat_models else ""
            raise OpenAIError(
                404, f"The embedding model '{model_id}' does not exist{hint}", code="model_not_found", param="model"
            )
        if not caller.may_use(model_id):
            raise OpenAIError(
                403, f"The API key '{caller.name}' may not use the model '{model_id}'", code="model_not_allowed"
            )
        return model_id

    async def _embed(self, ctx: RequestContext, model_id: str, body: EmbeddingRequest, texts: list[str]) -> Response:
        await self.admit(ctx)
        try:
            result = await asyncio.wait_for(
                embed_remote(self.embedders[model_id], model_id, texts), self.config.server.request_timeout_s
            )
        except Exception as exc:
            raise call_failed(ctx, exc, f"the embedding model '{model_id}'") from None
        if result.error:
            raise OpenAIError(400, result.error, code="context_length_exceeded", param=result.error_param)
        dimension = result.vectors.shape[1]
        if body.dimensions is not None and body.dimensions != dimension:
            raise OpenAIError(
                400,
                f"'{model_id}' produces {dimension}-dimensional vectors; dimensions={body.dimensions} is not supported",
                code="invalid_value",
                param="dimensions",
            )
        ctx.row.prompt_tokens = result.prompt_tokens
        ctx.row.cost_usd = ctx.price_factor * self.config.price(model_id).cost(result.prompt_tokens, 0)
        ctx.finish(200)
        payload = embedding_response(model_id, result.vectors, result.prompt_tokens, body.encoding_format)
        payload["usage"]["cost_usd"] = ctx.row.cost_usd
        return JSONResponse(payload, headers=ctx.response_headers())
