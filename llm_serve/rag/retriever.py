"""Retrieval for the router: embed the question with the embedding deployment, search Milvus, pick context.

The question goes through the same embedding deployment as /v1/embeddings (one model, one set of
batches), and the search runs in a worker thread because pymilvus' client is synchronous.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanKind
from pydantic import BaseModel, ConfigDict, Field

from llm_serve.config import Config
from llm_serve.prompts.version import PromptVersion
from llm_serve.rag.embedder import embed_remote
from llm_serve.rag.errors import RagError
from llm_serve.rag.milvus_server import milvus_uri
from llm_serve.rag.store import Hit, VectorStore
from llm_serve.telemetry import genai, tracing

STORE_ATTEMPTS = 3
STORE_RETRY_BASE_S = 0.5


class RagRequest(BaseModel):
    """The `rag` object a chat request may carry (through the OpenAI SDK's `extra_body`)."""

    model_config = ConfigDict(extra="forbid")

    collection: str
    top_k: int | None = Field(None, ge=1)
    filter: str | None = None
    # Evaluation (ragas context metrics) and clients that show quotes need the chunks themselves.
    include_text: bool = False


@dataclass
class Retrieval:
    """What retrieval found and what the answer will be built from."""

    collection: str
    hits: list[Hit]
    used: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)

    def sources(self, include_text: bool = False) -> list[dict[str, Any]]:
        return [h.as_source(include_text) for h in self.used]


def question_of(messages: list[Any]) -> str:
    """The text of the last user message: what retrieval searches for."""
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    raise RagError(
        "retrieval needs a user message to search for", kind="invalid_request", code="invalid_value", param="question"
    )


class Retriever:
    def __init__(self, config: Config, embedders: dict[str, Any]) -> None:
        self.config = config
        self.embedder = embedders.get(config.rag.embedding_model)
        self._store: VectorStore | None = None

    @property
    def store(self) -> VectorStore:
        if self._store is None:
            self._store = VectorStore(self.config.rag.milvus, milvus_uri(self.config))
        return self._store

    def reset(self) -> None:
        """Drop the client after a connection failure; the next search connects afresh."""
        store, self._store = self._store, None
        if store is not None:
            with contextlib.suppress(Exception):  # already broken: nothing more to release
                store.close()

    async def _search(self, request: RagRequest, vector: list[float], top_k: int) -> list[Hit]:
        """Search, reconnecting on a dropped Milvus connection (a busy Lite server refuses now and then);
        what is still failing after the retries is the store being unavailable, never an unexplained crash."""
        from pymilvus.exceptions import MilvusException

        for attempt in range(STORE_ATTEMPTS):
            try:
                return await asyncio.to_thread(
                    self.store.search, request.collection, vector, top_k, request.filter or ""
                )
            except MilvusException as exc:
                self.reset()
                if attempt == STORE_ATTEMPTS - 1:
                    raise RagError(
                        f"the vector store is unavailable ({exc.message})", kind="unavailable", code="store_unavailable"
                    ) from None
                await asyncio.sleep(STORE_RETRY_BASE_S * 2**attempt)
        raise AssertionError("unreachable")

    async def retrieve(self, question: str, request: RagRequest) -> Retrieval:
        if self.embedder is None:
            raise RagError(
                f"the embedding model '{self.config.rag.embedding_model}' is not deployed",
                kind="unavailable",
                code="engine_unavailable",
            )
        with tracing.tracer().start_as_current_span(
            f"retrieval {request.collection}",
            kind=SpanKind.INTERNAL,
            attributes={genai.OPERATION: "retrieval", genai.DATA_SOURCE: request.collection},
        ) as span:
            retrieval = await self._retrieve(question, request)
            span.set_attributes(
                {
                    "llm_serve.rag.top_k": request.top_k or self.config.rag.default_top_k,
                    "llm_serve.rag.retrieved": len(retrieval.hits),
                    "llm_serve.rag.used": len(retrieval.used),
                    "llm_serve.rag.best_score": max((h.score for h in retrieval.hits), default=0.0),
                }
            )
            return retrieval

    async def _retrieve(self, question: str, request: RagRequest) -> Retrieval:
        started = time.perf_counter()
        result = await embed_remote(self.embedder, self.config.rag.embedding_model, [question])
        if result.error:
            raise RagError(
                f"the question is too long to search for: {result.error}",
                kind="invalid_request",
                code="context_length_exceeded",
                param="question",
            )
        embedded = time.perf_counter()
        top_k = request.top_k or self.config.rag.default_top_k
        with tracing.tracer().start_as_current_span(
            f"search {request.collection}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "milvus",
                "db.operation.name": "search",
                "db.collection.name": request.collection,
            },
        ):
            hits = await self._search(request, result.vectors[0].tolist(), top_k)
        searched = time.perf_counter()
        used = select_context(hits, self.config.rag.score_threshold, self.config.rag.relative_score_window)
        return Retrieval(
            collection=request.collection,
            hits=hits,
            used=used,
            timings_ms={"embed": (embedded - started) * 1000, "search": (searched - embedded) * 1000},
        )


def select_context(hits: list[Hit], threshold: float, window: float) -> list[Hit]:
    """Hits worth showing the model: above the absolute threshold, near the best one, no repeated text."""
    if not hits:
        return []
    best = max(h.score for h in hits)
    seen: set[str] = set()
    used = []
    for hit in sorted(hits, key=lambda h: h.score, reverse=True):
        if hit.score < threshold or hit.score < best - window or hit.text in seen:
            continue
        seen.add(hit.text)
        used.append(hit)
    return used


def grounded_messages(
    prompt: PromptVersion, retrieval: Retrieval, messages: list[dict[str, Any]], max_chars: int
) -> list[dict[str, Any]]:
    """The conversation with the grounded system prompt first (context cut to `max_chars`).

    Chunks go in from least to most relevant, so the best one sits right before the question: on
    the sample manual SmolLM2-135M answered 7 of 10 questions right that way, against 4 of 10 with
    the best chunk first (measured with the questions in benchmarks/rag.py).
    """
    chunks, total = [], 0
    for hit in retrieval.used:  # best first, so that the size budget keeps the best
        if total + len(hit.text) > max_chars and chunks:
            break
        chunks.append({"text": hit.text[:max_chars], "source": hit.source, "page": hit.page})
        total += len(hit.text)
    system = {"role": "system", "content": prompt.render(chunks=list(reversed(chunks)))}
    return [system, *messages]
