"""Cache keys, stream assembly and replay, and the semantic cache on a real Milvus Lite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from ray.serve.llm import openai_api_models as api

from llm_serve.config import MilvusConfig, SemanticCacheConfig
from llm_serve.rag.embedder import EmbeddingResult
from llm_serve.router.cache_keys import CacheContext, exact_key, is_deterministic, semantic_parts
from llm_serve.router.replay import assemble, stream_events
from llm_serve.router.semantic_cache import SemanticCache

CTX = CacheContext(tenant="t", route="chat", model="m")


def body(messages: list[dict[str, Any]], **params: Any) -> Any:
    return api.ChatCompletionRequest.model_validate({"model": "m", "messages": messages, **params})


USER = [{"role": "user", "content": "How do I reset my password?"}]


def test_exact_key_covers_context_and_parameters_but_not_transport() -> None:
    base = exact_key(body(USER, temperature=0), CTX)
    assert base == exact_key(body(USER, temperature=0, stream=True, user="u1"), CTX), "transport only"
    assert base == exact_key(body(USER, temperature=0.0, n=1, stop=[]), CTX), "explicit defaults agree"
    for ctx in (
        CacheContext("other-tenant", "chat", "m"),
        CacheContext("t", "chat", "m", adapter="a1"),
        CacheContext("t", "chat", "m", prompt="p@2+abc"),
        CacheContext("t", "chat", "other-model"),
    ):
        assert exact_key(body(USER, temperature=0), ctx) != base, ctx
    for params in ({"seed": 3}, {"max_tokens": 7}, {"response_format": {"type": "json_object"}}, {"stop": ["."]}):
        assert exact_key(body(USER, temperature=0, **params), CTX) != base, params


def test_only_reproducible_requests_are_deterministic() -> None:
    assert is_deterministic(body(USER, temperature=0))
    assert is_deterministic(body(USER, temperature=0.7, seed=1))
    assert not is_deterministic(body(USER))
    assert not is_deterministic(body(USER, temperature=0.7))


def test_semantic_scope_separates_system_prompts_adapters_and_turns() -> None:
    system = [{"role": "system", "content": "Be terse."}]
    scope, question = semantic_parts(body(USER, temperature=0), CTX, multi_turn=False)
    assert question == USER[0]["content"]
    other_question = [{"role": "user", "content": "Where is my order?"}]
    assert semantic_parts(body(other_question, temperature=0), CTX, False)[0] == scope, "scope ignores the question"
    assert semantic_parts(body(system + USER, temperature=0), CTX, False)[0] != scope
    assert semantic_parts(body(USER, temperature=0), CacheContext("t", "chat", "m", "lora-1"), False)[0] != scope
    turns = [*USER, {"role": "assistant", "content": "Use the link."}, {"role": "user", "content": "And then?"}]
    assert semantic_parts(body(turns, temperature=0), CTX, multi_turn=False) is None
    assert semantic_parts(body(turns, temperature=0), CTX, multi_turn=True) is not None


def test_requests_with_tools_are_never_matched_by_meaning() -> None:
    """The live suite caught "Weather in Oslo?" served the tool call made for "Weather in Paris?"."""
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    assert semantic_parts(body(USER, temperature=0), CTX, False) is not None
    assert semantic_parts(body(USER, temperature=0, tools=[tool]), CTX, False) is None
    assert exact_key(body(USER, temperature=0, tools=[tool]), CTX) != exact_key(body(USER, temperature=0), CTX)


def test_stream_assembles_back_into_the_response_it_replays() -> None:
    payload = {
        "id": "chatcmpl-9",
        "object": "chat.completion",
        "created": 5,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "Press and hold.",
                    "tool_calls": [{"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
                },
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
    }
    events = stream_events(payload, include_usage=True, extra={"sources": []})
    assert events[-1] == "data: [DONE]\n\n"
    assert json.loads(events[-2][6:])["sources"] == []
    rebuilt = assemble(events, "chat")
    assert rebuilt["choices"] == payload["choices"] and rebuilt["usage"] == payload["usage"]
    assert rebuilt["id"] == "chatcmpl-9"


def test_cut_or_logprob_streams_are_not_assembled() -> None:
    head = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    cut = [f"data: {json.dumps({**head, 'choices': [{'index': 0, 'delta': {'content': 'x'}}]})}\n\n"]
    assert assemble(cut, "chat") is None
    lp = {
        **head,
        "choices": [{"index": 0, "delta": {"content": "x"}, "logprobs": {"content": []}, "finish_reason": "stop"}],
    }
    assert assemble([f"data: {json.dumps(lp)}\n\n"], "chat") is None


class FixedEmbedder:
    """Vectors chosen per text, so the test decides which questions are neighbours."""

    def __init__(self, vectors: dict[str, list[float]]) -> None:
        self.vectors = vectors
        self.embed = self

    async def remote(self, texts: list[str]) -> EmbeddingResult:
        return EmbeddingResult(np.array([self.vectors[t] for t in texts], dtype=np.float32), [1] * len(texts))


def unit(*values: float) -> list[float]:
    v = np.array(values, dtype=np.float64)
    return (v / np.linalg.norm(v)).tolist()


@pytest.fixture()
def lite(tmp_path: Path):
    from milvus_lite.server_manager import server_manager_instance

    path = str(tmp_path / "cache.db")
    yield path
    server_manager_instance.release_server(path)


def answer(text: str) -> dict[str, Any]:
    return {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }


async def test_semantic_cache_hits_rephrasings_only_within_scope(lite: str) -> None:
    embedder = FixedEmbedder(
        {
            "How do I reset my password?": unit(1, 0, 0, 0),
            "how can I reset my password": unit(0.98, 0.2, 0, 0),
            "How do I reset my router?": unit(0.97, 0.24, 0, 0),  # as close, but a different question
            "Where is my order?": unit(0, 0, 1, 0),
        }
    )
    cache = SemanticCache(SemanticCacheConfig(enabled=True, threshold=0.8), MilvusConfig(), lite, embedder)
    probe = await cache.lookup("scope-a", "How do I reset my password?")
    assert probe.hit is None and probe.vector is not None
    await cache.store("scope-a", "How do I reset my password?", probe.vector, answer("Use the link."))

    hit = await cache.lookup("scope-a", "how can I reset my password")
    assert hit.hit is not None and hit.hit.payload["choices"][0]["message"]["content"] == "Use the link."
    assert hit.hit.similarity == pytest.approx(0.98, abs=0.01)
    assert (await cache.lookup("scope-b", "how can I reset my password")).hit is None, "never across scopes"
    near_miss = await cache.lookup("scope-a", "How do I reset my router?")
    assert near_miss.hit is None and near_miss.best_similarity > 0.9, "close vector, other question: no hit"
    assert (await cache.lookup("scope-a", "Where is my order?")).hit is None


def test_the_exact_cache_is_bounded_in_bytes_too() -> None:
    from llm_serve.router.exact_cache import ExactCache

    cache = ExactCache(max_entries=100, ttl_s=60, max_bytes=1000)
    for i in range(10):
        cache.put(f"k{i}", {"n": i}, size=300)
    assert cache.bytes <= 1000 and len(cache) == 3, "the least recently used went first"
    assert cache.get("k9") == {"n": 9} and cache.get("k0") is None
    cache.put("k9", {"n": "again"}, size=100)
    assert cache.bytes == 700 and cache.stats()["bytes"] == 700, "replacing an entry counts it once"


async def test_an_answer_over_the_entry_limit_is_not_stored() -> None:
    from tests.unit.fakes import GREEDY, build, chat

    client, engines, state = build({"cache": {"exact": {"max_entry_bytes": 50}}})
    async with client:
        for _ in range(2):
            assert (await client.post("/v1/chat/completions", json=chat(**GREEDY))).headers[
                "x-llm-serve-cache"
            ] == "miss"
    assert state.cache.stats()["entries"] == 0 and len(engines["model-a"].calls) == 2
