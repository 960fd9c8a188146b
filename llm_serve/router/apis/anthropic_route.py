"""`/v1/messages` and `/v1/messages/count_tokens`: Anthropic's Messages API over the chat pipeline.

The anthropic SDK runs unchanged with only `base_url` set: it sends its key as `x-api-key` (the key
ring reads it as it reads a bearer token) and `anthropic-version`, which is checked for shape and,
with `anthropic.require_version`, for presence. Every error leaves in Anthropic's shape
(`{"type": "error", "error": {"type", "message"}}`), so the SDK raises its own exception classes.
`count_tokens` counts with the pool's tokenizer and chat template, as reservations do, and is free.
"""

from __future__ import annotations

import json
import logging
import re
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_serve.config import Config
from llm_serve.router.apis.anthropic_output import MessagesStream, error_body, error_response, from_chat
from llm_serve.router.apis.anthropic_request import (
    CountTokensRequest,
    MessagesRequest,
    chat_body,
    chat_messages,
    chat_tools,
    parse,
)
from llm_serve.router.apis.chat_stream import chunk_stream
from llm_serve.router.apis.responses_route import passed_headers
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, add_error_shape
from llm_serve.router.pipeline import GenerationPipeline
from llm_serve.router.prompt_tokens import PromptTokens
from llm_serve.router.stages.parse import read_json
from llm_serve.router.stages.resolve import Resolve

logger = logging.getLogger("llm_serve.router")

VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class MessagesRoute:
    def __init__(
        self, config: Config, pipeline: GenerationPipeline, keys: KeyRing, resolve: Resolve, tokens: PromptTokens
    ) -> None:
        self.config = config
        self.pipeline = pipeline
        self.keys = keys
        self.resolve = resolve
        self.tokens = tokens

    def install(self, app: FastAPI) -> None:
        add_error_shape(app, "/v1/messages", error_response)
        app.add_api_route("/v1/messages", self.create, methods=["POST"])
        app.add_api_route("/v1/messages/count_tokens", self.count_tokens, methods=["POST"])

    def _check_version(self, request: Request) -> None:
        version = request.headers.get("anthropic-version")
        if version is None and self.config.anthropic.require_version:
            raise OpenAIError(400, "anthropic-version: header is required", param="anthropic-version")
        if version is not None and not VERSION.match(version):
            raise OpenAIError(
                400, f"anthropic-version: {version!r} is not a version (YYYY-MM-DD)", param="anthropic-version"
            )

    # Errors raised here leave through the app's handlers, in the dialect `install` registered.
    async def create(self, request: Request) -> Response:
        self._check_version(request)
        turn: dict[str, Any] = {}

        async def translate(data: dict[str, Any], caller: Caller) -> dict[str, Any]:
            req = parse(MessagesRequest, data)
            turn["req"] = req
            return chat_body(req)

        response = await self.pipeline.handle(request, "chat", api="anthropic", translate=translate)
        req: MessagesRequest = turn["req"]
        if isinstance(response, StreamingResponse):
            stream = MessagesStream(req.model, req.stop_sequences)
            response.body_iterator = stream.events(chunk_stream(response.body_iterator))
            return response
        payload = json.loads(bytes(response.body))
        if response.status_code != 200:
            err = payload.get("error") or {}
            return JSONResponse(
                error_body(response.status_code, str(err.get("message", ""))),
                status_code=response.status_code,
                headers=passed_headers(response),
            )
        return JSONResponse(from_chat(req.model, payload, req.stop_sequences), headers=passed_headers(response))

    async def count_tokens(self, request: Request) -> Response:
        self._check_version(request)
        caller = self.keys.caller(request.headers)
        data = await read_json(request, self.config.server.max_body_bytes)
        req = parse(CountTokensRequest, data)
        ctx = RequestContext.start("chat", caller, request.headers, {"model": req.model})
        await self.resolve(ctx)  # the key must be allowed the model; an alias names its pool
        tools = chat_tools(req).get("tools")
        body = SimpleNamespace(messages=chat_messages(req), tools=tools)
        count = await self.tokens.count(ctx.row.model, "chat", body, margin=False)
        return JSONResponse({"input_tokens": count})
