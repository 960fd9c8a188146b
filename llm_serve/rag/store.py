"""Chunks and their vectors in Milvus (pymilvus only), one collection per knowledge base.

What is filtered on lives in top-level scalar fields (doc id, source, chunk index, page, hashes,
ingestion time): Milvus evaluates JSON-path filters row by row (ENVIRONMENT.md measured 300-900 ms
at 10k rows against ~10 ms for scalar fields). Chunk ids derive from the document's identity and the
chunk's content, so writing the same chunk twice is an upsert, never a duplicate.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

from llm_serve.config import MilvusConfig
from llm_serve.rag.errors import StoreError

MAX_TEXT_CHARS = 65_535
MAX_SOURCE_CHARS = 1024
COLLECTION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
OUTPUT_FIELDS = ["doc_id", "source", "chunk_index", "page", "text"]

# pymilvus logs every failed RPC with a traceback before raising; a client's bad filter expression is
# answered with a 400 here and is not worth a traceback in the router's log. Failures still raise.
# (Set after importing pymilvus: its logging set-up resets the levels of loggers below "pymilvus".)
import pymilvus  # noqa: E402, F401

logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)


@dataclass
class Chunk:
    """One piece of a document, ready to store (vector filled in by the ingester)."""

    doc_id: str
    doc_hash: str
    source: str
    chunk_index: int
    page: int
    text: str
    vector: list[float] | None = None

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()[:32]

    @property
    def id(self) -> str:
        return hashlib.sha256(f"{self.doc_id}:{self.chunk_index}:{self.content_hash}".encode()).hexdigest()[:32]


@dataclass
class Hit:
    """A retrieved chunk and its similarity (cosine for the default metric: higher is closer)."""

    id: str
    doc_id: str
    source: str
    chunk_index: int
    page: int
    text: str
    score: float

    def as_source(self, include_text: bool = False) -> dict[str, Any]:
        """What a response's `sources` shows (the text stays server-side unless asked for)."""
        out: dict[str, Any] = {
            "doc_id": self.doc_id,
            "source": self.source,
            "chunk": self.chunk_index,
            "score": round(self.score, 4),
        }
        if self.page >= 0:
            out["page"] = self.page
        if include_text:
            out["text"] = self.text
        return out


def check_collection_name(name: str) -> str:
    if not COLLECTION_NAME.match(name or ""):
        raise StoreError(
            f"invalid collection name {name!r}: letters, digits and underscores, starting with a letter or underscore",
            kind="invalid_request",
            code="invalid_value",
            param="collection",
        )
    return name


def quote(value: str) -> str:
    """A string literal for a Milvus filter expression."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


class VectorStore:
    """Thin, typed layer over MilvusClient for the chunk schema."""

    def __init__(self, config: MilvusConfig, uri: str) -> None:
        from llm_serve.rag.milvus_server import connect

        self.config = config
        self.uri = uri
        self.client = connect(uri, config.token, config.timeout_s)
        self._loaded: set[str] = set()

    def close(self) -> None:
        self.client.close()

    # ---- collections ----------------------------------------------------------------------------

    def has_collection(self, name: str) -> bool:
        return bool(self.client.has_collection(check_collection_name(name)))

    def _load(self, name: str) -> None:
        """Collections come back released after a server restart; searching one needs it loaded."""
        if name not in self._loaded:
            self.client.load_collection(name)
            self._loaded.add(name)

    def ensure_collection(self, name: str, dimension: int) -> None:
        from pymilvus import DataType

        check_collection_name(name)
        if self.client.has_collection(name):
            return
        schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("doc_id", DataType.VARCHAR, max_length=64)
        schema.add_field("doc_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("source", DataType.VARCHAR, max_length=MAX_SOURCE_CHARS)
        schema.add_field("chunk_index", DataType.INT64)
        schema.add_field("page", DataType.INT64)
        schema.add_field("content_hash", DataType.VARCHAR, max_length=64)
        schema.add_field("ingested_at", DataType.INT64)
        schema.add_field("text", DataType.VARCHAR, max_length=MAX_TEXT_CHARS)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dimension)
        index = self.client.prepare_index_params()
        index.add_index(
            "vector",
            index_type=self.config.index_type,
            metric_type=self.config.metric_type,
            params=self.config.index_params,
        )
        self.client.create_collection(name, schema=schema, index_params=index)

    def drop_collection(self, name: str) -> None:
        self.client.drop_collection(check_collection_name(name))
        self._loaded.discard(name)

    def count(self, name: str) -> int:
        self._load(check_collection_name(name))
        rows = self.client.query(check_collection_name(name), filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"]) if rows else 0

    # ---- documents ------------------------------------------------------------------------------

    def document_hash(self, name: str, doc_id: str) -> str | None:
        self._load(name)
        rows = self.client.query(name, filter=f"doc_id == {quote(doc_id)}", output_fields=["doc_hash"], limit=1)
        return rows[0]["doc_hash"] if rows else None

    def replace_document(self, name: str, doc_id: str, chunks: list[Chunk]) -> None:
        """Swap a document's chunks for new ones (delete by doc id, then upsert by content-derived id)."""
        self.client.delete(name, filter=f"doc_id == {quote(doc_id)}")
        if chunks:
            now = int(time.time())
            self.client.upsert(
                name,
                [
                    {
                        "id": c.id,
                        "doc_id": c.doc_id,
                        "doc_hash": c.doc_hash,
                        "source": c.source[:MAX_SOURCE_CHARS],
                        "chunk_index": c.chunk_index,
                        "page": c.page,
                        "content_hash": c.content_hash,
                        "ingested_at": now,
                        "text": c.text[:MAX_TEXT_CHARS],
                        "vector": c.vector,
                    }
                    for c in chunks
                ],
            )

    def flush(self, name: str) -> None:
        """Seal what was written so it is indexed: unsealed rows are searched by brute force."""
        self.client.flush(name)

    def delete_source(self, name: str, source: str) -> int:
        """Remove every chunk of documents whose source is `source` (or lies under it, for a directory)."""
        prefix = source.rstrip("/") + "/"
        expr = f"source == {quote(source)} or source like {quote(prefix.replace('%', '') + '%')}"
        before = self.count(name)
        self.client.delete(name, filter=expr)
        return before - self.count(name)

    # ---- search ---------------------------------------------------------------------------------

    def search(self, name: str, vector: list[float], top_k: int, filter_expr: str = "") -> list[Hit]:
        from pymilvus.exceptions import MilvusException

        check_collection_name(name)
        params = {"metric_type": self.config.metric_type, "params": dict(self.config.search_params)}
        ef = params["params"].get("ef")
        if ef is not None and ef < top_k:
            params["params"]["ef"] = top_k
        try:
            # Existence is learnt from the failure, not asked first: one RPC per search, not three.
            self._load(name)
            results = self.client.search(
                name,
                data=[vector],
                filter=filter_expr or "",
                limit=top_k,
                output_fields=OUTPUT_FIELDS,
                search_params=params,
            )
        except MilvusException as exc:
            self._loaded.discard(name)
            if not self.client.has_collection(name):
                raise StoreError(
                    f"collection '{name}' does not exist",
                    kind="not_found",
                    code="collection_not_found",
                    param="collection",
                ) from None
            if filter_expr:
                raise StoreError(
                    f"invalid filter expression {filter_expr!r}: {exc.message}",
                    kind="invalid_request",
                    code="invalid_filter",
                    param="filter",
                ) from None
            raise StoreError(f"search failed: {exc.message}") from None
        hits = []
        for row in results[0] if results else []:
            entity = row.get("entity", row)
            hits.append(
                Hit(
                    id=str(row.get("id", entity.get("id"))),
                    doc_id=entity["doc_id"],
                    source=entity["source"],
                    chunk_index=int(entity["chunk_index"]),
                    page=int(entity["page"]),
                    text=entity["text"],
                    score=float(row["distance"]),
                )
            )
        return hits
