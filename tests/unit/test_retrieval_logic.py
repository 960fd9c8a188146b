"""Which retrieved chunks become context, in what order, and how the request's `rag` object is read."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_serve.config import Config, parse_config
from llm_serve.prompts.template import PromptError, PromptTemplate
from llm_serve.rag.errors import RagError
from llm_serve.rag.retriever import Retrieval, grounded_messages, question_of, select_context
from llm_serve.rag.store import Hit
from llm_serve.router.errors import OpenAIError, from_rag_error
from llm_serve.router.stages.resolve import parse_rag

ROOT = Path(__file__).resolve().parents[2]


def hit(text: str, score: float, source: str = "a.md") -> Hit:
    return Hit(id=text, doc_id="d", source=source, chunk_index=0, page=-1, text=text, score=score)


def test_context_keeps_relevant_near_best_unique_chunks() -> None:
    hits = [hit("best", 0.70), hit("close", 0.65), hit("best", 0.64, "copy.md"), hit("far", 0.40), hit("noise", 0.10)]
    used = select_context(hits, threshold=0.2, window=0.1)
    assert [h.text for h in used] == ["best", "close"]
    assert select_context([hit("noise", 0.1)], threshold=0.2, window=0.1) == []


def test_best_chunk_is_rendered_last_and_sources_stay_best_first() -> None:
    prompt = PromptTemplate.load(ROOT / "configs" / "prompts" / "rag-grounded" / "1.yaml")
    used = [hit("FIRST-BEST", 0.9), hit("SECOND", 0.8)]
    retrieval = Retrieval("kb", used, used)
    messages = grounded_messages(prompt, retrieval, [{"role": "user", "content": "q?"}], max_chars=1000)
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and messages[1] == {"role": "user", "content": "q?"}
    assert system.index("SECOND") < system.index("FIRST-BEST")
    assert [s["score"] for s in retrieval.sources()] == [0.9, 0.8]


def test_context_budget_keeps_the_best() -> None:
    prompt = PromptTemplate(name="p", version="1", template="{% for c in chunks %}{{ c.text }}|{% endfor %}")
    used = [hit("a" * 80, 0.9), hit("b" * 80, 0.8)]
    system = grounded_messages(prompt, Retrieval("kb", used, used), [], max_chars=100)[0]["content"]
    assert "a" * 80 in system and "b" not in system


def test_prompt_reports_version_and_content_hash(tmp_path: Path) -> None:
    prompt = PromptTemplate.load(ROOT / "configs" / "prompts" / "rag-grounded" / "1.yaml")
    assert prompt.ref.startswith("rag-grounded@1+") and len(prompt.content_hash) == 12
    edited = PromptTemplate(prompt.name, prompt.version, prompt.template + " ")
    assert edited.ref != prompt.ref, "an edit without a version bump still shows"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nversion: 1\ntemplate: '{% for %}'\n")
    with pytest.raises(PromptError, match="does not parse"):
        PromptTemplate.load(bad)
    with pytest.raises(PromptError, match="chunks"):
        prompt.render()


def test_templates_are_sandboxed() -> None:
    evil = PromptTemplate("e", "1", "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    with pytest.raises(PromptError):
        evil.render()


def test_rag_object_is_read_over_alias_defaults() -> None:
    config = parse_config(
        {
            "models": [{"id": "m", "source": "s"}],
            "rag": {"aliases": [{"id": "support", "model": "m", "collection": "kb", "top_k": 3}]},
        }
    )
    alias = config.rag_alias("support")
    assert parse_rag(None, None, config) is None
    assert parse_rag(None, alias, config).model_dump() == {
        "collection": "kb",
        "top_k": 3,
        "filter": None,
        "include_text": False,
    }
    assert parse_rag({"include_text": True}, alias, config).include_text
    assert parse_rag({"top_k": 5}, alias, config).top_k == 5
    with pytest.raises(OpenAIError) as info:
        parse_rag({"colection": "kb"}, None, config)
    assert info.value.status == 422
    with pytest.raises(OpenAIError) as info:
        parse_rag({"collection": "kb", "top_k": 999}, None, config)
    assert info.value.status == 400
    with pytest.raises(OpenAIError):
        parse_rag("kb", None, config)


def test_alias_must_name_a_served_model() -> None:
    from llm_serve.config import ConfigError

    with pytest.raises(ConfigError, match="not served"):
        parse_config({"rag": {"aliases": [{"id": "a", "model": "missing", "collection": "kb"}]}})
    assert Config().rag.aliases == []


def test_question_is_the_last_user_message() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "x"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    assert question_of(messages) == "second"
    with pytest.raises(RagError) as info:
        question_of([{"role": "system", "content": "only system"}])
    assert from_rag_error(info.value).status == 400 and from_rag_error(info.value).param == "messages"


class FlakyStore:
    """Refuses the first `failures` searches the way a busy Milvus Lite server does."""

    made = 0

    def __init__(self, failures: int) -> None:
        self.failures = failures
        FlakyStore.made += 1

    def search(self, *_: object) -> list[Hit]:
        from pymilvus.exceptions import MilvusException

        if FlakyStore.made <= self.failures:
            raise MilvusException(code=2, message="Fail connecting to server")
        return [Hit("id", "doc", "src.md", 0, -1, "text", 0.9)]

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("failures", "status"), [(1, None), (2, None), (3, 503)])
async def test_dropped_milvus_connections_are_retried_then_503(
    failures: int, status: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llm_serve.rag import retriever as module

    FlakyStore.made = 0
    monkeypatch.setattr(module, "VectorStore", lambda *_: FlakyStore(failures))
    monkeypatch.setattr(module, "STORE_RETRY_BASE_S", 0.0)
    retriever = module.Retriever(Config(), {})
    request = module.RagRequest(collection="kb")
    if status is None:
        assert [h.id for h in await retriever._search(request, [0.1], 3)] == ["id"]
    else:
        with pytest.raises(RagError) as err:
            await retriever._search(request, [0.1], 3)
        assert from_rag_error(err.value).status == 503 and err.value.code == "store_unavailable"
