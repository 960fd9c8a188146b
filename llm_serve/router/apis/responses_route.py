"""`/v1/responses`: the Responses API over the chat pipeline, with stored responses to continue from.

A create request is translated into a chat request (with the stored conversation of
`previous_response_id` in front), answered by the same generation pipeline as chat (so keys, limits,
budget, prompts, RAG, caches and the ledger apply as they do there, the ledger row marked `api:
responses`), and the answer translated back. With `store` (the default, as at OpenAI) the response
and its conversation are written where every router replica reads them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_serve.config import Config
from llm_serve.router.apis.chat_stream import chunk_stream
from llm_serve.router.apis.response_store import ResponseStore
from llm_serve.router.apis.responses_output import ResponsesStream, from_chat, new_id, output_messages
from llm_serve.router.apis.responses_request import chat_body, input_messages, parse_request
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.errors import OpenAIError
from llm_serve.router.pipeline import GenerationPipeline

logger = logging.getLogger("llm_serve.router")

PASSED_HEADERS_SKIP = {"content-length", "content-type"}


def not_found(response_id: str, param: str | None = None) -> OpenAIError:
    return OpenAIError(
        404,
        f"{'Previous response' if param else 'Response'} with id '{response_id}' not found.",
        code="previous_response_not_found" if param else "not_found",
        param=param,
        type="invalid_request_error",
    )


def passed_headers(response: Response) -> dict[str, str]:
    """The pipeline's response headers (request id, model, cache, cost) for a body re-encoded here."""
    return {k: v for k, v in response.headers.items() if k.lower() not in PASSED_HEADERS_SKIP}


class ResponsesRoute:
    def __init__(self, config: Config, pipeline: GenerationPipeline, keys: KeyRing) -> None:
        settings = config.responses
        url = settings.store_url or config.ledger.database_url(config.home_path)
        self.store = ResponseStore(url, settings.ttl_s, settings.max_stored_bytes)
        self.pipeline = pipeline
        self.keys = keys

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/responses", self.create, methods=["POST"])
        app.add_api_route("/v1/responses/{response_id}", self.retrieve, methods=["GET"])
        app.add_api_route("/v1/responses/{response_id}", self.delete, methods=["DELETE"])

    async def create(self, request: Request) -> Response:
        turn: dict[str, Any] = {}

        async def translate(data: dict[str, Any], caller: Caller) -> dict[str, Any]:
            req = parse_request(data)
            history: list[dict[str, Any]] = []
            if req.previous_response_id is not None:
                found = await self.store.get(caller.name, req.previous_response_id)
                if found is None:
                    raise not_found(req.previous_response_id, "previous_response_id")
                history = found[1]
            new = input_messages(req.input)
            turn.update(req=req, caller=caller, conversation=history + new)
            return chat_body(req, history, new)

        response = await self.pipeline.handle(request, "chat", api="responses", translate=translate)
        req, caller, conversation = turn["req"], turn["caller"], turn["conversation"]
        response_id = new_id("resp")

        async def keep(obj: dict[str, Any]) -> None:
            if not req.store or obj["status"] not in {"completed", "incomplete"}:
                return
            try:
                if not await self.store.put(caller.name, obj, conversation + output_messages(obj)):
                    logger.warning("response %s not stored: its conversation is over the size limit", obj["id"])
            except Exception:  # the answer is paid for and sent; only its continuation is lost
                logger.exception("could not store response %s", obj["id"])

        if isinstance(response, StreamingResponse):
            stream = ResponsesStream(req, response_id, keep)
            response.body_iterator = stream.events(chunk_stream(response.body_iterator))
            return response
        if response.status_code != 200:
            return response
        obj = from_chat(req, json.loads(bytes(response.body)), response_id)
        await keep(obj)
        return JSONResponse(obj, headers=passed_headers(response))

    async def retrieve(self, request: Request, response_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        found = await self.store.get(caller.name, response_id)
        if found is None:
            raise not_found(response_id)
        return JSONResponse(found[0])

    async def delete(self, request: Request, response_id: str) -> JSONResponse:
        caller = self.keys.caller(request.headers)
        if not await self.store.delete(caller.name, response_id):
            raise not_found(response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})
