"""The chunk store on a real Milvus Lite (in-process, a file per test): ids, replacement, filters, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from llm_serve.config import MilvusConfig
from llm_serve.rag.store import Chunk, StoreError, VectorStore, check_collection_name, quote
from llm_serve.router.errors import from_rag_error

DIM = 8


def vec(seed: int) -> list[float]:
    v = np.random.default_rng(seed).normal(size=DIM)
    return (v / np.linalg.norm(v)).tolist()


def chunks(doc: str, source: str, texts: list[str], seed: int = 0) -> list[Chunk]:
    return [
        Chunk(
            doc_id=doc,
            doc_hash=f"h-{doc}-{len(texts)}",
            source=source,
            chunk_index=i,
            page=-1,
            text=t,
            vector=vec(seed + i),
        )
        for i, t in enumerate(texts)
    ]


@pytest.fixture()
def store(tmp_path: Path):
    from milvus_lite.server_manager import server_manager_instance

    path = str(tmp_path / "milvus.db")
    s = VectorStore(MilvusConfig(), path)
    s.ensure_collection("kb", DIM)
    yield s
    s.close()
    # Stop the in-process Lite server now, while pytest's log capture is still open (at exit it is not).
    server_manager_instance.release_server(path)


def test_ids_derive_from_document_position_and_content() -> None:
    a = Chunk("d", "h", "s", 0, -1, "text")
    assert a.id == Chunk("d", "other-hash", "elsewhere", 0, 3, "text").id
    assert a.id != Chunk("d", "h", "s", 1, -1, "text").id
    assert a.id != Chunk("d", "h", "s", 0, -1, "text!").id


def test_replace_is_idempotent_and_swaps_old_chunks(store: VectorStore) -> None:
    store.replace_document("kb", "d1", chunks("d1", "docs/a.md", ["one", "two", "three"]))
    store.replace_document("kb", "d1", chunks("d1", "docs/a.md", ["one", "two", "three"]))
    assert store.count("kb") == 3
    assert store.document_hash("kb", "d1") == "h-d1-3"
    store.replace_document("kb", "d1", chunks("d1", "docs/a.md", ["only one now"]))
    assert store.count("kb") == 1
    assert store.document_hash("kb", "d1") == "h-d1-1"


def test_search_scores_filters_and_pages(store: VectorStore) -> None:
    store.replace_document("kb", "d1", chunks("d1", "docs/a.md", ["alpha", "beta"], seed=0))
    store.replace_document("kb", "d2", chunks("d2", "web/b.html", ["gamma"], seed=10))
    hits = store.search("kb", vec(10), top_k=3)
    assert hits[0].source == "web/b.html" and hits[0].score == pytest.approx(1.0, abs=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert "page" not in hits[0].as_source()
    only_md = store.search("kb", vec(10), top_k=3, filter_expr='source like "%.md"')
    assert {h.source for h in only_md} == {"docs/a.md"}


def test_search_errors_map_to_http_status(store: VectorStore) -> None:
    """The store says what kind of failure it was; the router's mapping gives the status clients see."""
    with pytest.raises(StoreError) as info:
        store.search("kb", vec(1), 2, filter_expr="source ==== 1")
    assert (from_rag_error(info.value).status, info.value.code) == (400, "invalid_filter")
    with pytest.raises(StoreError) as info:
        store.search("missing", vec(1), 2)
    assert (from_rag_error(info.value).status, info.value.code) == (404, "collection_not_found")
    with pytest.raises(StoreError) as info:
        check_collection_name("drop table;")
    assert from_rag_error(info.value).status == 400


def test_delete_source_and_directory_prefix(store: VectorStore) -> None:
    store.replace_document("kb", "d1", chunks("d1", "docs/a.md", ["a", "b"]))
    store.replace_document("kb", "d2", chunks("d2", "docs/sub/c.md", ["c"]))
    store.replace_document("kb", "d3", chunks("d3", "docs-other/d.md", ["d"]))
    assert store.delete_source("kb", "docs/a.md") == 2
    assert store.delete_source("kb", "docs") == 1, "a directory prefix, not a string prefix"
    assert store.count("kb") == 1


def test_quote_escapes() -> None:
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
