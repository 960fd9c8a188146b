"""Answers reused across rephrasings of one question, without ever answering a different question.

A candidate must (1) live in the same scope: one Milvus partition per hash of everything but the
question (tenant, model, adapter, prompt version, system prompt, earlier turns, sampling parameters),
so a search can only ever see answers given under identical conditions; (2) be at or above the
cosine floor; and (3) pass the verifier (pair_classifier.py: a cross-encoder that reads both questions together,
fitted on labelled pairs), because embeddings put "refund after 30 days" and "refund within 30 days"
at 0.98 and "was I charged" next to "will I be charged". The scope is a partition key of one
collection rather than a collection per scope: Milvus caps collections in the thousands, while
scopes grow with tenants x prompts x parameters. Cache trouble (Milvus down, an over-long question)
is logged and served as a miss, never as a failed request.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from llm_serve.config import MilvusConfig, SemanticCacheConfig
from llm_serve.rag.embedder import embed_remote
from llm_serve.router.pair_classifier import PairClassifier, shipped
from llm_serve.router.semantic_match import same_question
from llm_serve.router.semantic_verifier import Verifier

logger = logging.getLogger("llm_serve.router")

CANDIDATES = 4
MAX_QUESTION_CHARS = 4096
MAX_ANSWER_BYTES = 65_535


@dataclass
class SemanticHit:
    payload: dict[str, Any]
    similarity: float
    question: str


@dataclass
class Probe:
    """The outcome of a lookup: a hit, or what a later store() of this question needs."""

    hit: SemanticHit | None
    vector: list[float] | None
    best_similarity: float | None


class SemanticCache:
    def __init__(self, config: SemanticCacheConfig, milvus: MilvusConfig, uri: str, embedder: Any) -> None:
        self.config = config
        self.milvus = milvus
        self.uri = uri
        self.embedder = embedder
        self._client: Any = None
        self._ready = False
        self.verifier = Verifier(threshold=config.verifier_threshold) if config.verifier == "learned" else None
        self.pairs: PairClassifier | None = None  # loaded on the first lookup (a second of torch work)

    def confirms(self, question: str, candidate: str, similarity: float) -> bool:
        """The second check on a neighbour above the floor (frames or words); see the module docstring."""
        if self.verifier is not None:
            return self.verifier.accepts(question, candidate, similarity, self.config.synonyms)
        if self.config.verifier == "lexical":
            return same_question(question, candidate, self.config.synonyms)
        return True

    def _confirmed(self, question: str, rows: list[tuple[float, dict[str, Any]]]) -> list[bool]:
        """Which candidates above the floor pass the verifier (blocking: run in a thread)."""
        if self.config.verifier != "cross_encoder":
            return [self.confirms(question, entity["question"], similarity) for similarity, entity in rows]
        if self.pairs is None:
            self.pairs = shipped(self.config.verifier_threshold)
        scores = self.pairs.scores(question, [entity["question"] for _, entity in rows])
        return [s >= self.pairs.threshold for s in scores]

    @property
    def client(self) -> Any:
        if self._client is None:
            from llm_serve.rag.milvus_server import connect

            self._client = connect(self.uri, self.milvus.token, self.milvus.timeout_s)
        return self._client

    def _reset(self) -> None:
        """After a failure, reconnect and re-check the collection on the next call."""
        self._client, self._ready = None, False

    def _ensure(self, dimension: int) -> None:
        if self._ready:
            return
        from pymilvus import DataType

        name = self.config.collection
        if not self.client.has_collection(name):
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
            schema.add_field("scope", DataType.VARCHAR, max_length=64, is_partition_key=True)
            schema.add_field("question", DataType.VARCHAR, max_length=MAX_QUESTION_CHARS * 4)
            schema.add_field("answer", DataType.VARCHAR, max_length=MAX_ANSWER_BYTES)
            schema.add_field("created_at", DataType.INT64)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
            index = self.client.prepare_index_params()
            index.add_index(
                "vector", index_type=self.milvus.index_type, metric_type="COSINE", params=self.milvus.index_params
            )
            self.client.create_collection(name, schema=schema, index_params=index)
        self.client.load_collection(name)
        self._ready = True

    async def _embed(self, question: str) -> list[float] | None:
        result = await embed_remote(self.embedder, self.config.embedding_model, [question])
        if result.error:
            return None
        return [float(x) for x in result.vectors[0]]

    async def lookup(self, scope: str, question: str) -> Probe:
        if len(question) > MAX_QUESTION_CHARS:
            return Probe(None, None, None)
        try:
            vector = await self._embed(question)
            if vector is None:
                return Probe(None, None, None)
            rows = await asyncio.to_thread(self._search, scope, vector)
        except Exception as exc:
            logger.warning("semantic cache lookup failed (%s: %s); treated as a miss", type(exc).__name__, exc)
            self._reset()
            return Probe(None, None, None)
        best = rows[0][0] if rows else None
        above = [(similarity, entity) for similarity, entity in rows if similarity >= self.config.threshold]
        if not above:
            return Probe(None, vector, best)
        try:
            confirmed = await asyncio.to_thread(self._confirmed, question, above)
        except Exception as exc:
            logger.warning("semantic cache verifier failed (%s: %s); treated as a miss", type(exc).__name__, exc)
            return Probe(None, vector, best)
        for (similarity, entity), ok in zip(above, confirmed, strict=True):
            if not ok:
                continue
            try:
                payload = json.loads(entity["answer"])
            except ValueError:
                continue
            return Probe(SemanticHit(payload, similarity, entity["question"]), vector, best)
        return Probe(None, vector, best)

    def _search(self, scope: str, vector: list[float]) -> list[tuple[float, dict[str, Any]]]:
        self._ensure(len(vector))
        fresh_after = int(time.time() - self.config.ttl_s)
        results = self.client.search(
            self.config.collection,
            data=[vector],
            filter=f'scope == "{scope}" and created_at >= {fresh_after}',
            limit=CANDIDATES,
            output_fields=["question", "answer"],
            search_params={"metric_type": "COSINE", "params": dict(self.milvus.search_params)},
        )
        rows = [(float(r["distance"]), r.get("entity", r)) for r in (results[0] if results else [])]
        return sorted(rows, key=lambda r: r[0], reverse=True)

    async def store(self, scope: str, question: str, vector: list[float] | None, payload: dict[str, Any]) -> None:
        answer = json.dumps(payload, separators=(",", ":"))
        content = "".join(
            (c.get("message") or {}).get("content") or c.get("text") or "" for c in payload.get("choices", [])
        )
        if vector is None or len(answer.encode()) > MAX_ANSWER_BYTES or len(content) > self.config.max_answer_chars:
            return
        row = {
            "id": hashlib.sha256(f"{scope}\n{question}".encode()).hexdigest()[:64],
            "scope": scope,
            "question": question,
            "answer": answer,
            "created_at": int(time.time()),
            "vector": vector,
        }
        try:
            await asyncio.to_thread(self._upsert, row)
        except Exception as exc:
            logger.warning("semantic cache store failed (%s: %s)", type(exc).__name__, exc)
            self._reset()

    def _upsert(self, row: dict[str, Any]) -> None:
        self._ensure(len(row["vector"]))
        self.client.upsert(self.config.collection, [row])
