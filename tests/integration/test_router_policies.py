"""Pricing, the ledger, the caches, coalescing, routing aliases and registry prompts on the real stack
(Ray Serve, vLLM on CPU with SmolLM2, the MiniLM embedder and Milvus Lite).

The Milvus data of the test home outlives a run, so every question carries a per-run nonce: a hit can
only come from this run.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest

NONCE = uuid.uuid4().hex[:8]
GREEDY = {"temperature": 0, "max_tokens": 24}


def chat(stack, question: str, **extra) -> dict:
    return {"model": stack.model, "messages": [{"role": "user", "content": question}], **GREEDY, **extra}


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(base_url=stack.url, timeout=300) as client:
        yield client


def ledger_row(http: httpx.Client, request_id: str) -> dict:
    rows = http.get("/admin/requests", params={"limit": 200}).json()["data"]
    return next(r for r in rows if r["request_id"] == request_id)


def test_streamed_request_is_priced_and_in_the_ledger(stack, http) -> None:
    request_id = f"stream-{NONCE}"
    # Not "Name a color.": the semantic cache served it "Name three colours."'s answer (a quantity near miss
    # the verifier let through), and this test is about pricing a stream the engine produced.
    question = f"Describe the smell of rain in four words. ({NONCE})"
    body = chat(stack, question, stream=True, stream_options={"include_usage": True})
    with http.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": request_id}) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    usage = next(json.loads(e)["usage"] for e in events[:-1] if json.loads(e).get("usage"))
    price = (usage["prompt_tokens"] * 0.05 + usage["completion_tokens"] * 0.10) / 1e6
    assert usage["completion_tokens"] > 0 and usage["cost_usd"] == pytest.approx(price)
    row = ledger_row(http, request_id)
    assert row["stream"] is True and row["status"] == 200 and row["cache"] == "miss"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost_usd"] == pytest.approx(price)
    usage_report = http.get("/admin/usage", params={"period": "day"}).json()
    assert any(r["key_name"] == "anonymous" and r["cost_usd"] > 0 for r in usage_report["data"])


def test_exact_cache_hit_is_identical_faster_and_cheaper(stack, http) -> None:
    body = chat(stack, f"What is the capital of France? ({NONCE})")
    miss = http.post("/v1/chat/completions", json=body)
    started = time.perf_counter()
    hit = http.post("/v1/chat/completions", json=body)
    hit_s = time.perf_counter() - started
    assert (miss.headers["x-llm-serve-cache"], hit.headers["x-llm-serve-cache"]) == ("miss", "hit")
    assert hit.json()["choices"][0]["message"] == miss.json()["choices"][0]["message"]
    assert float(hit.headers["x-llm-serve-cost-usd"]) < float(miss.headers["x-llm-serve-cost-usd"])
    assert hit_s < 0.5, f"a hit makes no engine call ({hit_s:.3f}s)"
    bypass = http.post("/v1/chat/completions", json=body, headers={"cache-control": "no-cache"})
    assert bypass.headers["x-llm-serve-cache"] == "bypass"


def test_semantic_cache_serves_rephrasings_not_near_misses(stack, client) -> None:
    question = f"How do I clean the filter of purifier {NONCE}?"
    first = client.chat.completions.with_raw_response.create(**chat(stack, question, max_tokens=32))
    assert first.headers["x-llm-serve-cache"] == "miss"
    answer = first.parse().choices[0].message.content

    rephrased = client.chat.completions.with_raw_response.create(
        **chat(stack, f"how can i clean the filter of purifier {NONCE}", max_tokens=32)
    )
    assert rephrased.headers["x-llm-serve-cache"] == "semantic_hit"
    assert float(rephrased.headers["x-llm-serve-cache-similarity"]) >= stack.config.cache.semantic.threshold
    assert rephrased.parse().choices[0].message.content == answer

    near_miss = client.chat.completions.with_raw_response.create(
        **chat(stack, f"How do I replace the filter of purifier {NONCE}?", max_tokens=32)
    )
    assert near_miss.headers["x-llm-serve-cache"] == "miss"

    # A streaming client gets the cached answer as a proper stream.
    streamed = client.chat.completions.create(
        **chat(stack, f"How can I clean the filter of purifier {NONCE}, please?", max_tokens=32), stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer

    # Another system prompt is another scope: never served from this one.
    other_scope = client.chat.completions.with_raw_response.create(
        model=stack.model,
        messages=[{"role": "system", "content": "Answer in French."}, {"role": "user", "content": question}],
        **GREEDY,
    )
    assert other_scope.headers["x-llm-serve-cache"] == "miss"


async def test_concurrent_identical_requests_make_one_engine_call(stack) -> None:
    body = chat(stack, f"Count from one to ten. ({NONCE})", max_tokens=40)
    async with httpx.AsyncClient(base_url=stack.url, timeout=300) as http:
        before = (await http.get("/admin/cache")).json()["coalescing"]
        responses = await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(6)))
        after = (await http.get("/admin/cache")).json()["coalescing"]
    assert {r.status_code for r in responses} == {200}
    assert len({r.json()["choices"][0]["message"]["content"] for r in responses}) == 1
    assert after["engine_calls"] - before["engine_calls"] == 1
    assert sorted(r.headers["x-llm-serve-cache"] for r in responses) == ["coalesced"] * 5 + ["miss"]


def test_alias_routes_to_its_pool(stack, http) -> None:
    resp = http.post("/v1/chat/completions", json={**chat(stack, f"Say hi. ({NONCE})"), "model": "gpt-4o-mini"})
    assert resp.status_code == 200 and resp.headers["x-llm-serve-model"] == stack.model
    assert "gpt-4o-mini" in [m["id"] for m in http.get("/v1/models").json()["data"]]


def test_registry_prompt_with_output_schema_answers_valid_json(stack, http) -> None:
    body = {
        "model": stack.model,
        **GREEDY,
        "max_tokens": 40,
        "prompt": {"name": "ticket-triage", "variables": {"ticket": f"I was charged twice for my order {NONCE}."}},
    }
    resp = http.post("/v1/chat/completions", json=body)
    assert resp.status_code == 200, resp.text
    assert resp.headers["x-llm-serve-prompt"].startswith("ticket-triage@1+")
    answer = json.loads(resp.json()["choices"][0]["message"]["content"])
    assert set(answer) == {"category", "urgent"}
    assert answer["category"] in {"billing", "shipping", "technical", "other"} and isinstance(answer["urgent"], bool)
    missing = http.post("/v1/chat/completions", json={**body, "prompt": {"name": "ticket-triage", "variables": {}}})
    assert missing.status_code == 400 and "ticket" in missing.json()["error"]["message"]
