"""Resolve: what the requested `model` names, which pools may answer and in what order.

A request names a served pool, a routing alias, `auto`, a RAG alias (a pool plus a collection) or an
adapter (`base:adapter`, or an adapter's bare name when only one pool has it); routing.py turns pool
names into the primary pool and its fallbacks. The caller's key must be allowed the name it sent
(or, for an adapter, its full id). The retrieval settings are resolved here too, because a RAG
alias supplies them.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from llm_serve.config import Config, RagAlias
from llm_serve.rag.retriever import RagRequest
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, invalid_body
from llm_serve.router.routing import route_candidates


class Resolve:
    def __init__(self, config: Config, adapters: AdapterCatalog) -> None:
        self.config = config
        self.adapters = adapters

    async def __call__(self, ctx: RequestContext) -> None:
        config, caller, data = self.config, ctx.caller, ctx.data
        requested: str = data["model"]
        alias = config.rag_alias(requested)
        adapter = None if alias is not None or config.model(requested) else await self.adapters.find(requested)
        if alias is not None or adapter is not None:
            base = alias.model if alias is not None else adapter.base_model_id
            if not (caller.may_use(requested) or (adapter is not None and caller.may_use(adapter.model_id))):
                raise OpenAIError(
                    403, f"The API key '{caller.name}' may not use the model '{requested}'", code="model_not_allowed"
                )
            ctx.candidates = [base]
        else:
            ctx.candidates = route_candidates(config, requested, caller, data)
        ctx.alias, ctx.adapter = alias, adapter
        ctx.row.model, ctx.model_known = ctx.candidates[0], True
        ctx.row.adapter = adapter.name if adapter is not None else None
        data["model"] = adapter.model_id if adapter is not None else ctx.candidates[0]
        if ctx.route != "chat" and (ctx.rag_raw is not None or alias is not None):
            raise OpenAIError(
                400, "retrieval (rag) is supported on /v1/chat/completions only", code="invalid_value", param="rag"
            )
        ctx.rag = parse_rag(ctx.rag_raw, alias, config)


def parse_rag(raw: Any, alias: RagAlias | None, config: Config) -> RagRequest | None:
    """The request's retrieval settings: its own `rag` object over the alias' defaults."""
    if raw is None and alias is None:
        return None
    base: dict[str, Any] = {}
    if alias is not None:
        base = {"collection": alias.collection, "top_k": alias.top_k, "filter": alias.filter}
    if raw is not None and not isinstance(raw, dict):
        raise OpenAIError(
            422, 'rag must be an object like {"collection": ..., "top_k": ...}', code="invalid_value", param="rag"
        )
    try:
        request = RagRequest.model_validate({**base, **{k: v for k, v in (raw or {}).items() if v is not None}})
    except ValidationError as exc:
        raise invalid_body(exc.errors(), prefix="rag") from None
    if request.top_k is not None and request.top_k > config.rag.max_top_k:
        raise OpenAIError(
            400, f"rag.top_k may be at most {config.rag.max_top_k}", code="invalid_value", param="rag.top_k"
        )
    return request
