"""Retrieve: search the request's collection and ground the conversation in what was found.

After admission (retrieval costs an embedding call and a search, which a refused key must not get)
and before the cache lookup (the grounded messages are part of what the answer depends on, so they
are part of the cache key). With nothing relevant found, `rag.fallback: refuse` ends the request
here with the configured refusal; `generate` answers without context and says so.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from llm_serve.config import Config, RagAlias
from llm_serve.prompts.version import PromptVersion
from llm_serve.rag.errors import RagError
from llm_serve.rag.retriever import RagRequest, Retrieval, Retriever, grounded_messages, question_of
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, from_rag_error
from llm_serve.router.observe import Observer
from llm_serve.router.replay import refusal_payload, replay


class Retrieve:
    def __init__(
        self, config: Config, retriever: Retriever, rag_prompt: PromptVersion | None, observer: Observer
    ) -> None:
        self.config = config
        self.retriever = retriever
        self.rag_prompt = rag_prompt
        self.observer = observer

    async def __call__(self, ctx: RequestContext) -> Response | None:
        rag = ctx.rag
        if rag is None:
            return None
        try:
            retrieval, ctx.extra = await self._retrieve(ctx.body, rag, ctx.alias)
        except RagError as exc:
            raise from_rag_error(exc) from None
        self.observer.metrics.retrieval.observe(
            sum(retrieval.timings_ms.values()) / 1000, {"collection": rag.collection}
        )
        if retrieval.used and self.observer.monitor.sample():
            ctx.rag_contexts = [hit.text for hit in retrieval.used]
        if retrieval.used or self.config.rag.fallback != "refuse":
            return None
        ctx.finish(200)
        ctx.row.cache = "none"
        return replay(
            refusal_payload(ctx.row.model, self.config.rag.refusal_message),
            stream=bool(ctx.body.stream),
            include_usage=ctx.include_usage,
            headers=ctx.response_headers(),
            extra=ctx.extra,
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
        return retrieval, {"sources": retrieval.sources(rag.include_text), "rag": info}
