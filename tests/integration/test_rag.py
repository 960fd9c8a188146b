"""RAG end to end on the real stack: ingest the sample manual into Milvus Lite, answer from it with sources."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import openai
import pytest

from tests.sample_pdf import write_safety_sheet

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
COLLECTION = "nimbus_manual"
MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def manual(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample knowledge base (data/manual) plus its PDF and files ingestion must skip."""
    base = tmp_path_factory.mktemp("kb") / "manual"
    shutil.copytree(ROOT / "data" / "manual", base)
    write_safety_sheet(base)
    (base / "notes-empty.md").write_text("   \n")
    (base / "image.txt").write_bytes(b"\x89PNG\x00\x00binary")
    (base / "archive.zip").write_bytes(b"PK\x03\x04")
    return base


def ingest(stack, *args: str):
    out = stack.cli("ingest", *args, "--collection", COLLECTION, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def row_count(stack) -> int:
    """The collection's rows, read directly from Milvus Lite. A fresh gRPC connection to the Lite server is
    now and then refused ("too many pings", a GOAWAY of its gRPC keepalive policing): try again."""
    import time

    from pymilvus import MilvusClient
    from pymilvus.exceptions import MilvusException

    for attempt in range(3):
        try:
            client = MilvusClient(uri="http://127.0.0.1:19541")
        except MilvusException:
            if attempt == 2:
                raise
            time.sleep(2)
            continue
        try:
            client.load_collection(COLLECTION)
            return int(client.query(COLLECTION, filter="", output_fields=["count(*)"])[0]["count(*)"])
        finally:
            client.close()
    raise AssertionError("unreachable")


@pytest.fixture(scope="module")
def ingested(stack, manual: Path) -> Path:
    from pymilvus import MilvusClient

    client = MilvusClient(uri="http://127.0.0.1:19541")
    client.drop_collection(COLLECTION)  # the test home persists between runs; start from nothing
    client.close()
    summary = ingest(stack, str(manual))
    assert "6 document(s) indexed" in summary
    assert "3 skipped" in summary and "0 error(s)" in summary
    assert "binary file" in summary and "empty" in summary and "unsupported file type '.zip'" in summary
    return manual


def ask(client, question: str, **rag) -> dict:
    resp = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=60,
        extra_body={"rag": {"collection": COLLECTION, **rag}},
    )
    return resp.http_response.json()


def test_reingesting_is_idempotent(stack, ingested: Path) -> None:
    before = row_count(stack)
    assert before > 6
    for _ in range(2):
        summary = ingest(stack, str(ingested))
        assert "6 unchanged" in summary and "0 document(s) indexed" in summary
    assert row_count(stack) == before


def test_changed_document_replaces_its_chunks(stack, ingested: Path, tmp_path: Path) -> None:
    doc = tmp_path / "changelog.md"
    doc.write_text("# Changelog\n\nFirmware 2.1 adds a child lock.\n")
    ingest(stack, str(doc))
    with_doc = row_count(stack)
    doc.write_text("# Changelog\n\nFirmware 2.2 adds a child lock and a quieter Night mode.\n\n" + "More. " * 200)
    summary = ingest(stack, str(doc))
    assert "(1 replaced)" in summary
    grown = row_count(stack)
    assert grown > with_doc
    ingest(stack, "--delete", str(doc))
    assert row_count(stack) == with_doc - 1


def test_answer_comes_from_the_manual_with_sources(client, ingested) -> None:
    body = ask(client, "How long is the warranty on the Cirrus 3?")
    assert "27 months" in body["choices"][0]["message"]["content"]
    assert body["sources"][0]["source"].endswith("warranty-and-billing.md")
    assert body["sources"][0]["score"] >= body["sources"][-1]["score"]
    assert body["rag"]["fallback"] is None and body["rag"]["prompt"].startswith("rag-grounded@1+")


def test_pdf_pages_are_sources(client, ingested) -> None:
    body = ask(client, "How heavy is the purifier?")
    top = body["sources"][0]
    assert top["source"].endswith("safety-sheet.pdf") and top["page"] == 2
    assert "5.2" in body["choices"][0]["message"]["content"]


def test_streamed_answer_ends_with_sources(client, ingested) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "How long is the warranty on the Cirrus 3?"}],
        temperature=0,
        max_tokens=60,
        stream=True,
        extra_body={"rag": {"collection": COLLECTION}},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "27 months" in text
    last = chunks[-1].model_dump()
    assert last["choices"] == [] and last["sources"][0]["source"].endswith("warranty-and-billing.md")


def test_filter_restricts_sources(client, ingested) -> None:
    body = ask(client, "When is support open?", filter='source like "%.html"')
    assert body["sources"] and all(s["source"].endswith(".html") for s in body["sources"])


def test_unrelated_question_falls_back_and_says_so(client, ingested) -> None:
    body = ask(client, "Tell me a joke about cats.")
    assert body["rag"]["fallback"] == "refused" and body["sources"] == []
    assert "don't know" in body["choices"][0]["message"]["content"]
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Tell me a joke about cats."}],
            stream=True,
            extra_body={"rag": {"collection": COLLECTION}},
        )
    )
    assert "don't know" in "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].model_dump()["rag"]["fallback"] == "refused"


def test_alias_model_answers_from_its_collection(client, ingested) -> None:
    assert "nimbus-support" in [m.id for m in client.models.list().data]
    resp = client.chat.completions.with_raw_response.create(
        model="nimbus-support",
        messages=[{"role": "user", "content": "What does error code E7 mean?"}],
        temperature=0,
        max_tokens=40,
    ).http_response.json()
    assert resp["rag"]["alias"] == "nimbus-support"
    assert resp["sources"][0]["source"].endswith("troubleshooting.md")


def test_rag_errors(client, stack, ingested) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        ask(client, "hi", collection="no_such_collection")
    assert info.value.body["code"] == "collection_not_found"
    with pytest.raises(openai.BadRequestError) as info:
        ask(client, "hi", filter="source ==== 3")
    assert info.value.body["code"] == "invalid_filter"
    with pytest.raises(openai.BadRequestError):
        ask(client, "hi", collection="bad name!")
    resp = httpx.post(
        f"{stack.base_url}/chat/completions",
        timeout=60,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "rag": {"colection": COLLECTION}},
    )
    assert resp.status_code == 422 and resp.json()["error"]["param"].startswith("rag")
    resp = httpx.post(
        f"{stack.base_url}/completions",
        timeout=60,
        json={"model": MODEL, "prompt": "hi", "rag": {"collection": COLLECTION}},
    )
    assert resp.status_code == 400 and json.loads(resp.text)["error"]["param"] == "rag"
