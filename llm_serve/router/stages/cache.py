"""Cache lookup: answer from the exact or the semantic cache, or note the coordinates a fill will need.

Only here, once the prompt version, the adapter version and the grounded messages are known: each is
part of what the answer depends on, so each is part of the key. A hit is priced by
`cache.hit_billing` and replayed in the shape the client asked for (JSON or a stream). Fills happen
after an engine answered in full (`fill`, called by the respond stage).
"""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

from starlette.responses import Response

from llm_serve import headers
from llm_serve.config import Config
from llm_serve.router.cache_keys import CacheContext, exact_key, is_deterministic, semantic_parts
from llm_serve.router.context import CacheLookup, RequestContext
from llm_serve.router.guardrails import Guardrails
from llm_serve.router.observe import Observer
from llm_serve.router.replay import replay
from llm_serve.router.semantic_cache import SemanticCache
from llm_serve.router.stages.settle import price_usage
from llm_serve.router.state import StateClient
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.router")

# Only whole answers are stored: a cut-off or failed one must never be replayed.
COMPLETE_FINISH_REASONS = ("stop", "length", "tool_calls")
# What a response carries about this request alone, never stored with the answer.
REQUEST_ONLY_FIELDS = ("sources", "rag")


class Cache:
    def __init__(
        self,
        config: Config,
        state: StateClient,
        semantic: SemanticCache | None,
        observer: Observer,
        guardrails: Guardrails | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.semantic = semantic
        self.observer = observer
        self.guardrails = guardrails

    async def __call__(self, ctx: RequestContext) -> Response | None:
        body = ctx.body
        bypass = ctx.cache_opt is False or "no-cache" in (ctx.headers.get("cache-control") or "").lower()
        deterministic = is_deterministic(body)
        cacheable = deterministic or not self.config.cache.exact.deterministic_only
        scope = CacheContext(ctx.caller.name, ctx.route, ctx.row.model, ctx.adapter_version, ctx.row.prompt)
        lookup = ctx.lookup = CacheLookup(ctx=scope, bypass=bypass, cacheable=cacheable, deterministic=deterministic)
        if bypass:
            ctx.row.cache = "bypass"
            return None
        if not cacheable:
            return None
        with tracing.tracer().start_as_current_span("llm_serve.cache_lookup") as span:
            hit = await self._lookup(ctx, lookup)
            span.set_attribute("llm_serve.cache", ctx.row.cache if hit is not None else "miss")
            if lookup.similarity is not None:
                span.set_attribute("llm_serve.cache.similarity", round(lookup.similarity, 4))
        if hit is None:
            ctx.row.cache = "miss"
            return None
        return self._replay(ctx, hit)

    async def _lookup(self, ctx: RequestContext, lookup: CacheLookup) -> dict[str, Any] | None:
        if self.config.cache.exact.enabled:
            lookup.exact_key = exact_key(ctx.body, lookup.ctx)
            try:
                hit = await self.state.cache_get(lookup.exact_key)
            except Exception as exc:  # the cache is an optimisation: trouble there is a miss
                logger.warning("exact cache lookup failed (%s: %s); treated as a miss", type(exc).__name__, exc)
                hit = None
            if hit is not None:
                ctx.row.cache = "hit"
                return hit
        if self.semantic is not None:
            parts = semantic_parts(ctx.body, lookup.ctx, self.config.cache.semantic.multi_turn)
            if parts is not None:
                lookup.scope, lookup.question = parts
                probe = await self.semantic.lookup(lookup.scope, lookup.question)
                lookup.vector = probe.vector
                if probe.hit is not None:
                    ctx.row.cache = "semantic_hit"
                    lookup.similarity = probe.hit.similarity
                    return probe.hit.payload
        return None

    def _replay(self, ctx: RequestContext, payload: dict[str, Any]) -> Response:
        payload = copy.deepcopy(payload)
        price_usage(self.config, ctx, payload.get("usage"))
        if self.guardrails is not None:  # a stored answer passes the same output checks as a fresh one
            self.guardrails.output_payload(ctx, payload)
        if isinstance(payload.get("usage"), dict):
            payload["usage"]["cost_usd"] = ctx.row.cost_usd
        ctx.finish(200)
        self.observer.response(ctx, payload)
        response_headers = ctx.cost_headers()
        if ctx.lookup is not None and ctx.lookup.similarity is not None:
            response_headers[headers.SIMILARITY] = f"{ctx.lookup.similarity:.4f}"
        return replay(
            payload,
            stream=bool(ctx.body.stream),
            include_usage=ctx.include_usage,
            headers=response_headers,
            extra=ctx.extra,
        )

    async def fill(self, lookup: CacheLookup | None, payload: dict[str, Any] | None) -> None:
        """Store a whole answer under the request's coordinates (exact and, for a question, semantic)."""
        if payload is None or lookup is None or not lookup.fills:
            return
        if not all(c.get("finish_reason") in COMPLETE_FINISH_REASONS for c in payload.get("choices", [])):
            return
        payload = {k: v for k, v in payload.items() if k not in REQUEST_ONLY_FIELDS}
        size = len(json.dumps(payload, separators=(",", ":")))
        if size > self.config.cache.exact.max_entry_bytes:
            return  # too big to keep: a few such answers would crowd out thousands of ordinary ones
        try:
            if lookup.exact_key is not None:
                await self.state.cache_put(lookup.exact_key, payload, size)
            if self.semantic is not None and lookup.scope is not None and lookup.question is not None:
                await self.semantic.store(lookup.scope, lookup.question, lookup.vector, payload)
        except Exception as exc:  # an answer already made is still delivered
            logger.warning("cache fill failed (%s: %s)", type(exc).__name__, exc)
