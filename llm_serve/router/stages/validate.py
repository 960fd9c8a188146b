"""Validate: the body against vLLM's own protocol models, as the engine will read it.

After prompt rendering (the prompt adds messages and may set `response_format`), so the request is
checked as it will be sent; a bad request is refused here, before it costs an admission or an engine
call. Streams always ask the engine for usage, on every chunk (`continuous_usage_stats`), so every
streamed request is counted and priced, to the token, even when it is cut short; the relay drops the
usage again unless the client asked for it.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from llm_serve.engine import ray_llm
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, invalid_body
from llm_serve.router.routing import estimate_tokens


def protocol() -> Any:
    """Ray Serve LLM's public request models (vLLM's, re-exported). Imported on first use: it pulls in
    vLLM, which unit tests of config or CLI do not need."""
    from ray.serve.llm import openai_api_models

    return openai_api_models


def validate(request_cls: type, data: dict[str, Any]) -> Any:
    """vLLM's request object for `data`; every refusal of its validators is the client's 4xx."""
    try:
        return request_cls.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    except Exception as exc:  # vLLM's own validators raise ValueError or VLLMValidationError (with `parameter`)
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise OpenAIError(400, message, code="invalid_value", param=getattr(exc, "parameter", None)) from None


def sanitize_messages(body: Any) -> Any:
    """Materialize pydantic's lazy iterators in messages so the request pickles across the Ray handle."""
    try:
        return ray_llm.sanitize_chat_completion_request(body)
    except ValueError as exc:
        raise OpenAIError(422, str(exc), code="invalid_value", param="messages") from None


class Validate:
    def __init__(self) -> None:
        api = protocol()
        self.request_classes = {"chat": api.ChatCompletionRequest, "completions": api.CompletionRequest}

    async def __call__(self, ctx: RequestContext) -> None:
        data = ctx.data
        options = data.get("stream_options")
        # Anything but an object (or null) is left for the protocol model to refuse with a 422.
        if options is None or isinstance(options, dict):
            ctx.include_usage = bool((options or {}).get("include_usage"))
            ctx.continuous_usage = bool((options or {}).get("continuous_usage_stats"))
            if data.get("stream"):
                forced = {"include_usage": True, "continuous_usage_stats": True}
                data = {**data, "stream_options": {**(options or {}), **forced}}
        body = validate(self.request_classes[ctx.route], data)
        if ctx.route == "chat":
            if not body.messages:
                raise OpenAIError(400, "messages must not be empty", code="invalid_value", param="messages")
            body = sanitize_messages(body)
        ctx.body = body
        ctx.estimated_prompt_tokens = estimate_tokens(data)
