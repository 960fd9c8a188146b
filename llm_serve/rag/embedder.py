"""The embedding deployment: a sentence-transformers model behind Serve's dynamic batching.

Each text of a request becomes one item of the batch queue, so a request of 100 texts and ten
requests of one text each fill batches the same way, and texts from different callers (the
/v1/embeddings route, retrieval, the semantic cache) share one forward pass. The forward pass runs
in a thread so the replica keeps answering health checks while it computes. Inputs over the model's
token limit are refused before any compute unless the config says to truncate them: a silently
truncated document would be retrieved on its first 256 tokens only.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry.trace import SpanKind
from ray import serve

from llm_serve.config import EmbedderConfig
from llm_serve.models.resolve import resolve_embedding_source
from llm_serve.telemetry import genai, tracing


@dataclass
class EmbeddingResult:
    """Vectors (float32, one row per input) and the tokens each input counted, or the reason for refusal."""

    vectors: np.ndarray | None
    token_counts: list[int]
    error: str | None = None
    error_param: str | None = None

    @property
    def prompt_tokens(self) -> int:
        return sum(self.token_counts)


class Embedder:
    """Plain class (constructible without Ray); app.py wraps it in a Serve deployment."""

    def __init__(self, config: dict[str, Any] | EmbedderConfig, tracing_config: dict[str, Any] | None = None) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        self.config = config if isinstance(config, EmbedderConfig) else EmbedderConfig.model_validate(config)
        torch.set_num_threads(self.config.num_threads or os.cpu_count() or 1)
        self.model = SentenceTransformer(resolve_embedding_source(self.config.source), device="cpu")
        self.tokenizer = self.model.tokenizer
        self.max_tokens = int(self.model.max_seq_length)
        self.dimension = int(self.model.get_embedding_dimension())
        self._encode_batch.set_max_batch_size(self.config.max_batch_size)
        self._encode_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)
        self.batches_run = 0
        tracing.setup_tracing(tracing_config, "embedder")

    async def check_health(self) -> None:
        return None

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text as the model counts them (special tokens included), before any truncation."""
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=False, verbose=False)
        return [len(ids) for ids in encoded["input_ids"]]

    async def embed(self, texts: list[str], trace_headers: dict[str, str] | None = None) -> EmbeddingResult:
        parent = tracing.context_from(trace_headers) if tracing.enabled() else None
        if parent is None:
            return await self._embed(texts)
        with tracing.tracer().start_as_current_span(
            genai.span_name("embeddings", self.config.id),
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                genai.OPERATION: "embeddings",
                genai.REQUEST_MODEL: self.config.id,
                "llm_serve.inputs": len(texts),
            },
        ) as span:
            result = await self._embed(texts)
            span.set_attribute(genai.INPUT_TOKENS, result.prompt_tokens)
            if result.error:
                span.set_attribute(genai.ERROR_TYPE, "context_length_exceeded")
            return result

    async def _embed(self, texts: list[str]) -> EmbeddingResult:
        counts = self.count_tokens(texts)
        if not self.config.truncate:
            too_long = [i for i, n in enumerate(counts) if n > self.max_tokens]
            if too_long:
                first = too_long[0]
                return EmbeddingResult(
                    None,
                    counts,
                    error=f"input[{first}] has {counts[first]} tokens, more than the {self.max_tokens} that "
                    f"'{self.config.id}' accepts ({len(too_long)} input(s) too long); shorten it",
                    error_param="input",
                )
        else:
            counts = [min(n, self.max_tokens) for n in counts]
        rows = await asyncio.gather(*(self._encode_batch(text) for text in texts))
        return EmbeddingResult(np.stack(rows).astype(np.float32, copy=False), counts)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        self.batches_run += 1
        vectors = await asyncio.to_thread(
            self.model.encode,
            texts,
            batch_size=len(texts),
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return list(vectors)


async def embed_remote(handle: Any, model_id: str, texts: list[str]) -> EmbeddingResult:
    """Call an embedder deployment inside a CLIENT span whose context travels with the call."""
    if not tracing.enabled():
        return await handle.embed.remote(texts)
    with tracing.tracer().start_as_current_span(
        genai.span_name("embeddings", model_id),
        kind=SpanKind.CLIENT,
        attributes={genai.OPERATION: "embeddings", genai.REQUEST_MODEL: model_id, "llm_serve.inputs": len(texts)},
    ) as span:
        result = await handle.embed.remote(texts, tracing.carrier())
        span.set_attribute(genai.INPUT_TOKENS, result.prompt_tokens)
        return result
