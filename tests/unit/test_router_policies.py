"""Keys, limits, budgets, pricing, the ledger, the exact cache, coalescing, routing and prompts, through
the router's HTTP app with stand-in engines (counted calls) and the real RouterState on SQLite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from llm_serve.config import parse_config
from llm_serve.router.state import RouterState
from tests.unit.fakes import (
    GREEDY,
    KEYS,
    A,
    B,
    Engine,
    assert_openai_error,
    auth,
    build,
    chat,
    keys_config,
    stream_items,
)

# ---- keys -----------------------------------------------------------------------------------------


async def test_keys_401_403_and_admin_only_usage() -> None:
    client, engines, _ = build(keys_config())
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 401, "missing_api_key")
        bad = {"authorization": "Bearer sk-wrong"}
        assert_openai_error(await client.post("/v1/chat/completions", json=chat(), headers=bad), 401, "invalid_api_key")
        assert (await client.post("/v1/chat/completions", json=chat(), headers=auth("alice"))).status_code == 200
        assert (
            await client.post("/v1/chat/completions", json=chat(), headers={"x-api-key": KEYS["alice"]})
        ).status_code == 200
        forbidden = await client.post("/v1/chat/completions", json=chat(A), headers=auth("bob"))
        assert_openai_error(forbidden, 403, "model_not_allowed")
        assert [m["id"] for m in (await client.get("/v1/models", headers=auth("bob"))).json()["data"]] == [B]
        assert_openai_error(await client.get("/admin/usage", headers=auth("alice")), 403, "admin_only")
        usage = (await client.get("/admin/usage?period=day", headers=auth("admin"))).json()
    assert len(engines[A].calls) == 2, "refused requests never reach an engine"
    assert [(r["key_name"], r["requests"]) for r in usage["data"]] == [("alice", 2), ("bob", 1)]


def test_keys_from_environment_are_hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    from llm_serve.router.auth import KeyRing

    monkeypatch.setenv("ACME_KEY", "sk-from-env")
    ring = KeyRing(parse_config({"auth": {"keys": [{"name": "acme", "key_env": "ACME_KEY"}]}}).auth)
    assert ring.authenticate("Bearer sk-from-env", None).name == "acme"
    assert "sk-from-env" not in repr(ring.__dict__)


# ---- limits and budgets ---------------------------------------------------------------------------


async def test_rpm_limit_holds_under_concurrency_with_retry_after() -> None:
    client, engines, _ = build(keys_config(rpm=3))
    async with client:
        responses = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat(), headers=auth("alice")) for _ in range(10))
        )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 3 + [429] * 7
    limited = next(r for r in responses if r.status_code == 429)
    assert_openai_error(limited, 429, "rate_limit_exceeded")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    assert len(engines[A].calls) == 3


# Without the model's tokenizer (stand-in engines) a prompt is reserved as its UTF-8 bytes, its role, and
# router.prompt_overhead_tokens (64): "hi" from the user is 2 + 4 + 64 = 70 tokens. With max_tokens 1, one
# request reserves 71 tokens, and at model A's $1/$2 per million, $0.000072. It then costs 5 + 1 tokens, $0.000007.
RESERVED_TOKENS, RESERVED_USD, COST_USD = 71, 70e-6 + 2e-6, 7e-6


async def test_tpm_counts_what_requests_in_flight_may_still_use() -> None:
    engines = {A: Engine(A, delay_s=0.3), B: Engine(B)}
    client, _, _ = build(keys_config(tpm=2 * RESERVED_TOKENS + 10), engines=engines)
    async with client:
        three = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=auth("alice")) for _ in range(3))
        )
        assert sorted(r.status_code for r in three) == [200, 200, 429], "two reservations fill the window"
        refused = next(r for r in three if r.status_code == 429)
        assert_openai_error(refused, 429, "rate_limit_exceeded")
        assert "reserved in flight" in refused.json()["error"]["message"]
        # Settled, they hold only what they used (12 tokens): the next one fits again.
        after = await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=auth("alice"))
        assert after.status_code == 200
        huge = await client.post("/v1/chat/completions", json=chat(max_tokens=500), headers=auth("alice"))
        assert_openai_error(huge, 429, "rate_limit_exceeded")
        assert "more than your" in huge.json()["error"]["message"], "a worst case over the whole tpm never fits"
    assert len(engines[A].calls) == 3


async def test_budget_holds_under_concurrency_and_across_a_restart() -> None:
    budget = 1e-4  # room for one reservation at a time, and for the spend of several answers
    engines = {A: Engine(A, delay_s=0.3), B: Engine(B)}
    client, _, state = build(keys_config(budget_usd=budget, budget_period="day"), engines=engines)
    async with client:
        burst = await asyncio.gather(
            *(client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=auth("alice")) for _ in range(16))
        )
        statuses = sorted(r.status_code for r in burst)
        assert statuses == [200] + [429] * 15, "one worst case fits the budget, two do not"
        assert_openai_error(next(r for r in burst if r.status_code == 429), 429, "insufficient_quota")
        too_big = await client.post("/v1/chat/completions", json=chat(max_tokens=100), headers=auth("alice"))
        assert "could cost up to" in assert_openai_error(too_big, 429, "insufficient_quota")["message"]
        # One at a time, answers come until spend plus one reservation would pass the budget: 5 of them.
        answered = 1
        while (
            await client.post("/v1/chat/completions", json=chat(max_tokens=1), headers=auth("alice"))
        ).status_code == 200:
            answered += 1
        assert answered == 5 and answered * COST_USD <= budget
        assert len(engines[A].calls) == answered
        other = await client.post("/v1/chat/completions", json=chat(B), headers=auth("bob"))
        assert other.status_code == 200, "one key's budget does not touch another's"
    spent = sum(r["cost_usd"] for r in await state.recent(1000) if r["key_name"] == "alice")
    assert spent == pytest.approx(answered * COST_USD) and spent <= budget
    # Spend survives a restart: a new state over the same ledger refuses the next worst case at once.
    restarted = RouterState(state.config)
    refusal = await restarted.admit("alice", budget_usd=budget, budget_period="day", usd=RESERVED_USD)
    assert refusal["code"] == "insufficient_quota"
    assert "reservation" in await restarted.admit("alice", budget_usd=budget, budget_period="day", usd=1e-6)


# ---- pricing and ledger ---------------------------------------------------------------------------


async def test_streamed_request_is_priced_and_recorded_before_done() -> None:
    client, _, state = build()
    async with (
        client,
        client.stream(
            "POST", "/v1/chat/completions", json=chat(stream=True, stream_options={"include_usage": True})
        ) as resp,
    ):
        events = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
        rows_before_done = await state.recent(1000)
    usage = next(json.loads(e[6:])["usage"] for e in events if '"usage"' in e)
    expected = (10 * 1.0 + 4 * 2.0) / 1e6
    assert usage["cost_usd"] == pytest.approx(expected)
    assert events[-1] == "data: [DONE]"
    row = rows_before_done[0]
    assert (row["stream"], row["prompt_tokens"], row["completion_tokens"], row["status"]) == (True, 10, 4, 200)
    assert row["cost_usd"] == pytest.approx(expected)


async def test_json_request_has_cost_header_and_ledger_row() -> None:
    client, _, state = build()
    async with client:
        resp = await client.post("/v1/chat/completions", json=chat(), headers={"x-request-id": "req-1"})
    expected = (5 * 1.0 + 1 * 2.0) / 1e6
    assert float(resp.headers["x-llm-serve-cost-usd"]) == pytest.approx(expected)
    assert resp.json()["usage"]["cost_usd"] == pytest.approx(expected)
    row = (await state.recent(1000))[0]
    assert (row["request_id"], row["key_name"], row["model"], row["cache"]) == ("req-1", "anonymous", A, "none")


async def test_failed_requests_are_recorded_with_their_status() -> None:
    client, _, state = build(engines={A: Engine(A, fail=True), B: Engine(B)})
    async with client:
        assert_openai_error(await client.post("/v1/chat/completions", json=chat()), 503, "engine_unavailable")
    assert (await state.recent(1000))[0]["status"] == 503


# ---- exact cache ----------------------------------------------------------------------------------


async def test_exact_hit_replays_json_and_stream_without_engine_call() -> None:
    client, engines, state = build()
    async with client:
        miss = await client.post("/v1/chat/completions", json=chat(**GREEDY))
        hit = await client.post("/v1/chat/completions", json=chat(**GREEDY))
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, **GREEDY)) as resp:
            stream_cache = resp.headers["x-llm-serve-cache"]
            events = [json.loads(line[6:]) for line in [x async for x in resp.aiter_lines()] if line[6:7] == "{"]
    assert (miss.headers["x-llm-serve-cache"], hit.headers["x-llm-serve-cache"], stream_cache) == (
        "miss",
        "hit",
        "hit",
    )
    assert hit.json()["choices"] == miss.json()["choices"]
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in events if c["choices"]) == "answer from model-a"
    assert len(engines[A].calls) == 1
    # Hits are priced at the cached-input rate for their prompt tokens, no output.
    assert float(hit.headers["x-llm-serve-cost-usd"]) == pytest.approx(5 * 1.0 / 1e6)
    assert [r["cache"] for r in (await state.recent(1000))] == ["hit", "hit", "miss"]


async def test_stream_fills_the_cache_for_json_callers() -> None:
    client, engines, _ = build()
    async with client:
        async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, **GREEDY)) as resp:
            [_ async for _ in resp.aiter_lines()]
        hit = await client.post("/v1/chat/completions", json=chat(**GREEDY))
    assert hit.headers["x-llm-serve-cache"] == "hit"
    assert hit.json()["choices"][0]["message"]["content"] == "answer from model-a"
    assert hit.json()["usage"]["completion_tokens"] == 4
    assert len(engines[A].calls) == 1


@pytest.mark.parametrize(
    ("first", "second", "headers"),
    [
        (chat(A, **GREEDY), chat(B, **GREEDY), {}),  # across models
        (chat(**GREEDY), chat(**GREEDY, max_tokens=5), {}),  # across sampling parameters
        (
            chat(**GREEDY),
            {
                **GREEDY,
                "model": A,
                "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "hi"}],
            },
            {},
        ),  # across system prompts
        (chat(**GREEDY), chat(**GREEDY), {"cache-control": "no-cache"}),  # bypass by header
        (chat(**GREEDY), chat(**GREEDY, cache=False), {}),  # bypass by body
        (chat(), chat(), {}),  # not deterministic: never cached
    ],
    ids=["model", "params", "system-prompt", "no-cache-header", "cache-false", "non-deterministic"],
)
async def test_no_hit_across_what_decides_the_answer(first: dict, second: dict, headers: dict) -> None:
    client, engines, _ = build()
    async with client:
        await client.post("/v1/chat/completions", json=first)
        resp = await client.post("/v1/chat/completions", json=second, headers=headers)
    assert resp.headers["x-llm-serve-cache"] in ("miss", "bypass", "none")
    assert sum(len(e.calls) for e in engines.values()) == 2


async def test_no_hit_across_tenants() -> None:
    client, engines, _ = build(keys_config())
    async with client:
        await client.post("/v1/chat/completions", json=chat(B, **GREEDY), headers=auth("alice"))
        resp = await client.post("/v1/chat/completions", json=chat(B, **GREEDY), headers=auth("bob"))
        again = await client.post("/v1/chat/completions", json=chat(B, **GREEDY), headers=auth("bob"))
    assert (resp.headers["x-llm-serve-cache"], again.headers["x-llm-serve-cache"]) == ("miss", "hit")
    assert len(engines[B].calls) == 2


async def test_no_hit_across_prompt_versions() -> None:
    client, engines, _ = build(prompts=True)
    variables = {"question": "How do I reset my Cirrus 3?"}
    async with client:
        v1 = await client.post(
            "/v1/chat/completions",
            json={"model": A, **GREEDY, "prompt": {"name": "support-answer", "version": "1", "variables": variables}},
        )
        v2 = await client.post(
            "/v1/chat/completions",
            json={"model": A, **GREEDY, "prompt": {"name": "support-answer", "version": "2", "variables": variables}},
        )
    assert v1.headers["x-llm-serve-prompt"].startswith("support-answer@1+")
    assert v2.headers["x-llm-serve-prompt"].startswith("support-answer@2+")
    assert v2.headers["x-llm-serve-cache"] == "miss"
    assert len(engines[A].calls) == 2


# ---- coalescing -----------------------------------------------------------------------------------


async def test_concurrent_identical_requests_make_one_engine_call() -> None:
    engines = {A: Engine(A, delay_s=0.2), B: Engine(B)}
    client, _, state = build(engines=engines)
    async with client:
        json_calls = [client.post("/v1/chat/completions", json=chat(**GREEDY)) for _ in range(6)]

        async def streamed() -> str:
            async with client.stream("POST", "/v1/chat/completions", json=chat(stream=True, **GREEDY)) as resp:
                lines = [line async for line in resp.aiter_lines() if line.startswith("data: {")]
            return "".join(
                json.loads(x[6:])["choices"][0]["delta"].get("content", "")
                for x in lines
                if json.loads(x[6:])["choices"]
            )

        results = await asyncio.gather(*json_calls, *(streamed() for _ in range(4)))
    answers = {r.json()["choices"][0]["message"]["content"] for r in results[:6]} | set(results[6:])
    assert answers == {"answer from model-a"}
    assert len(engines[A].calls) == 2, "one JSON call and one stream call for ten callers"
    caches = sorted(r["cache"] for r in (await state.recent(1000)))
    assert caches == ["coalesced"] * 8 + ["miss"] * 2


# ---- routing --------------------------------------------------------------------------------------


async def test_alias_fallback_and_auto() -> None:
    engines = {A: Engine(A, fail=True), B: Engine(B)}
    routing = {
        "routing": {
            "aliases": {"gpt-4o-mini": A},
            "fallbacks": {A: [B]},
            "auto": [{"models": [A, B], "max_input_tokens": 1000}],
        }
    }
    client, _, _ = build(routing, engines=engines)
    async with client:
        fell_back = await client.post("/v1/chat/completions", json=chat("gpt-4o-mini"))
        auto = await client.post("/v1/chat/completions", json=chat("auto"))
        too_long = await client.post("/v1/chat/completions", json=chat("auto", "x" * 8000))
        listed = [m["id"] for m in (await client.get("/v1/models")).json()["data"]]
    assert fell_back.status_code == 200 and fell_back.headers["x-llm-serve-model"] == B
    assert len(engines[A].calls) == 1 and fell_back.json()["choices"][0]["message"]["content"] == "answer from model-b"
    assert auto.headers["x-llm-serve-model"] == B, "B is the cheaper pool"
    assert_openai_error(too_long, 400, "no_route")
    assert "gpt-4o-mini" in listed


# ---- prompts --------------------------------------------------------------------------------------


async def test_prompt_renders_and_reports_version_and_bad_variables_are_named() -> None:
    client, engines, state = build(prompts=True)
    async with client:
        ok = await client.post(
            "/v1/chat/completions",
            json={
                "model": A,
                "prompt": {"name": "support-answer", "alias": "staging", "variables": {"question": "Q?"}},
            },
        )
        missing = await client.post(
            "/v1/chat/completions", json={"model": A, "prompt": {"name": "support-answer", "variables": {}}}
        )
        wrong = await client.post(
            "/v1/chat/completions",
            json={"model": A, "prompt": {"name": "support-answer", "variables": {"question": "Q?", "tone": "rude"}}},
        )
        unknown = await client.post("/v1/chat/completions", json={"model": A, "prompt": {"name": "nope"}})
        triage = await client.post(
            "/v1/chat/completions",
            json={"model": A, "prompt": {"name": "ticket-triage", "variables": {"ticket": "charged twice"}}},
        )
    assert ok.headers["x-llm-serve-prompt"].startswith("support-answer@2+")
    sent = engines[A].calls[0][1]
    assert sent.messages[0]["role"] == "system" and sent.messages[-1]["content"] == "Q?"
    assert "question" in assert_openai_error(missing, 400, "invalid_prompt_variables")["message"]
    assert "tone" in assert_openai_error(wrong, 400, "invalid_prompt_variables")["message"]
    assert_openai_error(unknown, 404, "prompt_not_found")
    assert triage.status_code == 200
    schema = engines[A].calls[1][1].response_format
    assert schema.type == "json_schema" and schema.json_schema.json_schema["required"] == ["category", "urgent"]
    assert (await state.recent(1000))[-1]["prompt"].startswith("support-answer@2+")


async def test_stream_cut_short_is_still_recorded_and_priced() -> None:
    class Dying(Engine):
        async def _results(self, body: Any) -> AsyncIterator[Any]:
            for item in stream_items("partial", self.model)[:2]:
                yield item
            raise RuntimeError("replica died mid-stream")

    client, _, state = build(engines={A: Dying(A), B: Engine(B)})
    async with client, client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert '"engine_error"' in lines[-2] and lines[-1] == "data: [DONE]"
    row = (await state.recent(1000))[0]
    assert row["status"] == 500 and "tokens estimated" in row["error"]
    assert row["completion_tokens"] == 2 and row["prompt_tokens"] > 0 and row["cost_usd"] > 0


async def test_relay_deadline_ends_the_stream_cleanly_for_a_slow_reader() -> None:
    from llm_serve.router.relay import StreamRelay

    async def engine() -> AsyncIterator[Any]:
        for item in stream_items()[1:]:
            yield item

    relay = StreamRelay(stream_items()[0], engine(), keep_usage_chunk=False, deadline_s=0.05)
    out = []
    async for text in relay:  # no CancelledError reaches the reader, whatever it was doing
        out.append(text)
        await asyncio.sleep(0.1)  # past the deadline while the reader, not the engine, is busy
    assert relay.timed_out and '"timeout"' in out[-2] and out[-1] == "data: [DONE]\n\n"
