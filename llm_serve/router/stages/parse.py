"""Parse: the body as a JSON object, its `model`, and llm-serve's extensions taken out of it.

The extensions (`rag`, `prompt` on chat, `cache`) are ours, not the engine's: they come off the
body here, so that what later stages validate and send on is a plain OpenAI request.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.requests import Request

from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError


async def read_json(request: Request, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past `max_bytes` (a chunked body has no length to check earlier)."""
    raw = await request.body()
    if len(raw) > max_bytes:
        raise OpenAIError(
            413, f"request body of {len(raw)} bytes exceeds the limit of {max_bytes} bytes", code="request_too_large"
        )
    try:
        data = json.loads(raw)
    except RecursionError:
        raise OpenAIError(400, "request body is nested too deeply", code="invalid_json") from None
    except ValueError as exc:  # bad JSON, bad UTF-8, an integer too long to convert
        raise OpenAIError(400, f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise OpenAIError(400, "request body must be a JSON object", code="invalid_json")
    return data


def require_model(data: dict[str, Any]) -> str:
    requested = data.get("model")
    if requested is None:
        raise OpenAIError(400, "you must provide a model parameter", code="missing_required_parameter", param="model")
    if not isinstance(requested, str):
        raise OpenAIError(422, "model must be a string", code="invalid_type", param="model")
    return requested


class Parse:
    async def __call__(self, ctx: RequestContext) -> None:
        data = ctx.data
        require_model(data)
        ctx.rag_raw = data.pop("rag", None)
        ctx.prompt_raw = data.pop("prompt", None) if ctx.route == "chat" else None
        ctx.cache_opt = data.pop("cache", None)
        if ctx.cache_opt is not None and not isinstance(ctx.cache_opt, bool):
            raise OpenAIError(422, "cache must be true or false", code="invalid_type", param="cache")
