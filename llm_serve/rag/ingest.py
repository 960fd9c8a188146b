"""Ingestion: documents -> token-counted chunks -> vectors -> Milvus, idempotently.

A document is known by its source name; its hash decides what happens on a later run: unchanged
documents are skipped without embedding anything, changed ones have their old chunks replaced, so
running the same ingestion twice leaves the collection as it was. Vectors come from the same
sentence-transformers model the embedding deployment serves, loaded in this process (identical
weights, no HTTP round trips for bulk work).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from tqdm import tqdm

from llm_serve.config import Config, EmbedderConfig
from llm_serve.rag.chunking import split_text
from llm_serve.rag.loaders import Document, LoadError, collect_files, load
from llm_serve.rag.milvus_server import milvus_available
from llm_serve.rag.store import Chunk, VectorStore, check_collection_name

EMBED_BATCH = 32


@dataclass
class IngestReport:
    """What an ingestion run did, for the CLI summary and for tests."""

    collection: str
    documents: int = 0
    chunks: int = 0
    unchanged: int = 0
    replaced: int = 0
    deleted_chunks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        lines = [
            f"collection '{self.collection}': {self.documents} document(s) indexed ({self.replaced} replaced), "
            f"{self.chunks} chunk(s) written, {self.unchanged} unchanged, {len(self.skipped)} skipped, "
            f"{len(self.errors)} error(s)"
        ]
        if self.deleted_chunks:
            lines.append(f"  deleted {self.deleted_chunks} chunk(s)")
        lines += [f"  skipped {path}: {reason}" for path, reason in self.skipped]
        lines += [f"  error   {path}: {reason}" for path, reason in self.errors]
        return "\n".join(lines)


class LocalEmbedder:
    """The configured embedding model in this process, with its tokenizer for chunk sizing."""

    def __init__(self, config: EmbedderConfig) -> None:
        from sentence_transformers import SentenceTransformer

        from llm_serve.models.resolve import resolve_embedding_source

        self.config = config
        self.model = SentenceTransformer(resolve_embedding_source(config.source), device="cpu")
        self.tokenizer = self.model.tokenizer
        self.dimension = int(self.model.get_embedding_dimension())

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])

    def encode(self, texts: list[str]) -> list[list[float]]:
        vectors = self.model.encode(
            texts,
            batch_size=EMBED_BATCH,
            normalize_embeddings=self.config.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return vectors.tolist()


def chunk_document(doc: Document, embedder: LocalEmbedder, size: int, overlap: int) -> list[Chunk]:
    chunks: list[Chunk] = []
    for page, text in doc.pages:
        for piece in split_text(text, embedder.count_tokens, size, overlap):
            chunks.append(
                Chunk(
                    doc_id=doc.doc_id,
                    doc_hash=doc.doc_hash,
                    source=doc.source,
                    chunk_index=len(chunks),
                    page=page,
                    text=piece,
                )
            )
    return chunks


def embedder_config(config: Config) -> EmbedderConfig:
    found = config.embedder(config.rag.embedding_model)
    if found is None:
        raise ValueError(f"rag.embedding_model '{config.rag.embedding_model}' is not in embedding_models")
    return found


def ingest(
    paths: Iterable[str | os.PathLike[str]],
    collection: str,
    config: Config,
    *,
    delete_sources: Iterable[str] = (),
    progress: bool = True,
    embedder: LocalEmbedder | None = None,
) -> IngestReport:
    """Index `paths` into `collection` (created on first use) and remove `delete_sources`."""
    check_collection_name(collection)
    report = IngestReport(collection)
    files, report.skipped = collect_files(paths)
    with milvus_available(config) as uri:
        store = VectorStore(config.rag.milvus, uri)
        try:
            for source in delete_sources:
                if store.has_collection(collection):
                    report.deleted_chunks += store.delete_source(collection, source)
            if not files:
                return report
            embedder = embedder or LocalEmbedder(embedder_config(config))
            store.ensure_collection(collection, embedder.dimension)
            bar = tqdm(files, desc=f"ingest {collection}", unit="file", disable=not progress, file=sys.stderr)
            for path in bar:
                bar.set_postfix_str(path.name[:40])
                _ingest_one(path, collection, store, embedder, config, report)
            if report.documents:
                store.flush(collection)
        finally:
            store.close()
    return report


def _ingest_one(
    path: Any, collection: str, store: VectorStore, embedder: LocalEmbedder, config: Config, report: IngestReport
) -> None:
    try:
        doc = load(path)
    except LoadError as exc:
        report.skipped.append((str(path), str(exc)))
        return
    try:
        existing = store.document_hash(collection, doc.doc_id)
        if existing == doc.doc_hash:
            report.unchanged += 1
            return
        chunks = chunk_document(doc, embedder, config.rag.chunk_size_tokens, config.rag.chunk_overlap_tokens)
        vectors = embedder.encode([c.text for c in chunks])
        for chunk, vector in zip(chunks, vectors, strict=True):
            chunk.vector = vector
        store.replace_document(collection, doc.doc_id, chunks)
    except Exception as exc:  # one bad document must not sink the batch; the report names it
        report.errors.append((doc.source, f"{type(exc).__name__}: {exc}"))
        return
    report.documents += 1
    report.chunks += len(chunks)
    if existing is not None:
        report.replaced += 1
