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

from llm_serve.config import AUTO_MODEL, Config, RagAlias
from llm_serve.rag.errors import RagError
from llm_serve.rag.filters import and_filters
from llm_serve.rag.retriever import RagRequest
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.auth import OPEN, Caller
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, from_rag_error, invalid_body
from llm_serve.router.routing import route_candidates
from llm_serve.router.served_aliases import AliasCache


class Resolve:
    def __init__(self, config: Config, adapters: AdapterCatalog, served: AliasCache | None = None) -> None:
        self.config = config
        self.adapters = adapters
        self.served = served
        self.fixed = {m.id for m in config.models} | {a.id for a in config.rag.aliases} | set(config.routing.aliases)

    async def _served_alias(self, ctx: RequestContext, requested: str) -> tuple[str, Caller]:
        """A served alias (router/served_aliases.py) becomes its target; the key may be allowed either name.

        Returns the model id to resolve and the caller to resolve it as: a key allowed the alias is allowed
        what the alias points at (and that pool's fallbacks), whatever its `models` list says of them.
        """
        if self.served is None or requested in self.fixed or requested == AUTO_MODEL:
            return requested, ctx.caller
        target = await self.served.get(requested)
        if target is None:
            return requested, ctx.caller
        if not (ctx.caller.may_use(requested) or ctx.caller.may_use(target.model_id)):
            raise OpenAIError(
                403, f"The API key '{ctx.caller.name}' may not use the model '{requested}'", code="model_not_allowed"
            )
        ctx.row.served_alias = requested
        raw = ctx.prompt_raw
        pinned = target.prompt and isinstance(raw, dict) and raw.get("name") == target.prompt_name
        if pinned and raw.get("version") is None and raw.get("alias") is None:  # an explicit choice is the client's
            raw["version"] = target.prompt_version
        ctx.data["model"] = target.model_id
        return target.model_id, OPEN if ctx.caller.may_use(requested) else ctx.caller

    async def __call__(self, ctx: RequestContext) -> None:
        config, data = self.config, ctx.data
        requested, caller = await self._served_alias(ctx, data["model"])
        alias = config.rag_alias(requested)
        adapter = None if alias is not None or config.model(requested) else await self.adapters.find(requested)
        if alias is not None or adapter is not None:
            base = alias.model if alias is not None else adapter.base_model_id
            allowed = (
                caller.may_use_alias(alias.id, alias.collection)
                if alias is not None
                else caller.may_use(requested) or caller.may_use(adapter.model_id)
            )
            if not allowed:
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
        ctx.rag = parse_rag(ctx.rag_raw, alias, config, ctx.caller)


def parse_rag(raw: Any, alias: RagAlias | None, config: Config, caller: Caller = OPEN) -> RagRequest | None:
    """The request's retrieval settings, inside what its key and its alias allow.

    An alias fixes the collection and its filter: a request may narrow them (its filter is AND-ed
    with the alias's) but not widen them (another collection is refused; an empty filter removes
    nothing). Without an alias, the key must be allowed the collection it names.
    """
    if raw is None and alias is None:
        return None
    if raw is not None and not isinstance(raw, dict):
        raise OpenAIError(
            422, 'rag must be an object like {"collection": ..., "top_k": ...}', code="invalid_value", param="rag"
        )
    asked = {k: v for k, v in (raw or {}).items() if v is not None}
    try:
        if alias is not None:
            collection = asked.get("collection", alias.collection)
            if collection != alias.collection:
                raise OpenAIError(
                    400,
                    f"the model '{alias.id}' answers from its own collection; rag.collection cannot change it",
                    code="invalid_value",
                    param="rag.collection",
                )
            asked = {**asked, "collection": alias.collection, "top_k": asked.get("top_k", alias.top_k)}
            if asked.get("filter") is None or isinstance(asked["filter"], str):  # else: a 422 below
                asked["filter"] = and_filters(alias.filter, asked.get("filter"))
        elif isinstance(asked.get("filter"), str):
            asked["filter"] = and_filters(None, asked["filter"])
    except RagError as exc:
        raise from_rag_error(exc) from None
    try:
        request = RagRequest.model_validate(asked)
    except ValidationError as exc:
        raise invalid_body(exc.errors(), prefix="rag") from None
    if alias is None and not caller.may_search(request.collection):
        raise OpenAIError(
            403,
            f"The API key '{caller.name}' may not search the collection '{request.collection}'",
            code="collection_not_allowed",
            param="rag.collection",
        )
    if request.top_k is not None and request.top_k > config.rag.max_top_k:
        raise OpenAIError(
            400, f"rag.top_k may be at most {config.rag.max_top_k}", code="invalid_value", param="rag.top_k"
        )
    return request
