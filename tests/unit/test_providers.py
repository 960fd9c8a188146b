"""API pools: translation both ways, the upstream's failures as the client sees them, fallbacks across
kinds, the breaker, and the key kept out of every answer. The router is the real one; the upstream is a
scriptable HTTP server on 127.0.0.1 (tests/upstream_stub.py); vLLM's own server is the upstream of the
integration tests."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from llm_serve import headers as h
from llm_serve.config import ProviderConfig, parse_config
from llm_serve.router.ingress import Router
from llm_serve.router.providers import anthropic_wire, openai_wire
from llm_serve.router.providers.errors import from_status, redact
from llm_serve.router.state import RouterState
from tests.unit.fakes import A, Engine, assert_openai_error
from tests.upstream_stub import UpstreamStub

KEY = "sk-upstream-secret-0123456789"
KEY_ENV = "LLM_SERVE_UNIT_UPSTREAM_KEY"
UP, CLAUDE = "up-gpt", "up-claude"
UP_PRICE = {"input_per_1m": 3.0, "output_per_1m": 6.0}


@pytest.fixture
def stub() -> Iterator[UpstreamStub]:
    with UpstreamStub() as server:
        yield server


def router_client(
    stub: UpstreamStub, monkeypatch: pytest.MonkeyPatch, *, engine: Engine | None = None, **extra: Any
) -> tuple[httpx.AsyncClient, Engine]:
    monkeypatch.setenv(KEY_ENV, KEY)
    provider = {"base_url": f"{stub.url}/v1", "api_key_env": KEY_ENV, "max_retries": 0, "retry_backoff_s": 0.01}
    provider.update(extra.pop("provider", {}))
    config = parse_config(
        {
            "models": [
                {"id": A, "source": "x", "price": {"input_per_1m": 1.0, "output_per_1m": 2.0}},
                {"id": UP, "provider": {"kind": "openai_compatible", "model": "upstream-model", **provider},
                 "price": UP_PRICE},
                {"id": CLAUDE, "provider": {"kind": "anthropic", "model": "upstream-model", **provider}},
            ],
            "embedding_models": [],
            **extra,
        }
    )  # fmt: skip
    engine = engine or Engine(A)
    router = Router(config, {A: engine.handle}, {}, None, state=RouterState(config))
    app = router.build_asgi_app()
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test"), engine


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}


async def stream_payloads(client: httpx.AsyncClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    async with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status_code == 200, await resp.aread()
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


# ---- translation -------------------------------------------------------------------------------


def test_openai_body_keeps_only_openai_fields_and_asks_for_usage() -> None:
    provider = ProviderConfig(kind="openai", pass_params=["repetition_penalty"])
    body = {"model": UP, "messages": [], "top_k": 5, "repetition_penalty": 1.1, "stream": True,
            "stream_options": {"include_usage": False, "continuous_usage_stats": True}, "temperature": 0}  # fmt: skip
    out = openai_wire.upstream_body("chat", body, provider, "gpt-4o-mini")
    assert out["model"] == "gpt-4o-mini"
    assert "top_k" not in out and out["repetition_penalty"] == 1.1 and out["temperature"] == 0
    assert out["stream_options"] == {"include_usage": True}
    vllm = ProviderConfig(kind="openai_compatible", base_url="http://x/v1", continuous_usage=True)
    assert openai_wire.upstream_body("chat", body, vllm, "m")["stream_options"]["continuous_usage_stats"] is True


def test_chat_conversation_becomes_alternating_anthropic_turns() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "call_1", "type": "function",
                         "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"},
        {"role": "user", "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "tomorrow?"}]},
    ]  # fmt: skip
    system, turns = anthropic_wire.messages_of(messages)
    assert system == "Be brief."
    assert [t["role"] for t in turns] == ["user", "assistant", "user"]
    assert turns[1]["content"] == [
        {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Oslo"}}
    ]
    assert turns[2]["content"][0] == {"type": "tool_result", "tool_use_id": "call_1", "content": "12 C"}
    assert [b["text"] for b in turns[2]["content"][1:]] == ["And ", "tomorrow?"]


def test_anthropic_body_maps_tools_choice_stop_and_requires_max_tokens() -> None:
    provider = ProviderConfig(kind="anthropic", default_max_tokens=321)
    tool = {"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"}}}
    body = {"messages": [{"role": "user", "content": "x"}], "tools": [tool], "tool_choice": "required",
            "parallel_tool_calls": False, "stop": "END", "temperature": 0.2, "user": "u1"}  # fmt: skip
    out = anthropic_wire.upstream_body(body, provider, "claude-x")
    assert out["max_tokens"] == 321 and out["stop_sequences"] == ["END"] and out["metadata"] == {"user_id": "u1"}
    assert out["tools"] == [{"name": "f", "description": "d", "input_schema": {"type": "object"}}]
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}
    named = anthropic_wire.upstream_body({**body, "tool_choice": {"type": "function", "function": {"name": "f"}}},
                                         provider, "m")  # fmt: skip
    assert named["tool_choice"]["type"] == "tool" and named["tool_choice"]["name"] == "f"
    for refused in ({"n": 2}, {"logprobs": True}, {"response_format": {"type": "json_object"}}):
        with pytest.raises(Exception) as err:
            anthropic_wire.upstream_body({**body, **refused}, provider, "m")
        assert err.value.status == 400 and err.value.param == next(iter(refused))


def test_anthropic_stream_becomes_chat_chunks_with_tool_calls_and_usage() -> None:
    chunks = anthropic_wire.ChunkStream("up-claude")
    out: list[dict[str, Any]] = []
    from tests.upstream_stub import _anthropic_stream

    for event in _anthropic_stream():
        kind, data = event.split("\n")[0][7:], json.loads(event.split("\n")[1][6:])
        out += chunks.feed(kind, data)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in out if c["choices"])
    calls = [tc for c in out if c["choices"] for tc in c["choices"][0]["delta"].get("tool_calls") or []]
    assert text == "stub answer"
    assert calls[0]["id"] == "toolu_1" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city": "Oslo"}'
    assert out[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert out[-1]["choices"] == [] and out[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 9,
                                                             "total_tokens": 16}  # fmt: skip


def test_upstream_statuses_map_to_what_the_client_can_act_on() -> None:
    def mapped(status: int, message: str = "x") -> tuple[int, str, bool, bool]:
        e = from_status(status, {"error": {"message": message}}, "m", (KEY,), 3.0)
        return e.status, e.code, e.counts, e.falls_back

    assert mapped(401, f"Incorrect API key provided: {KEY}") == (502, "upstream_auth_failed", True, True)
    assert mapped(429) == (429, "upstream_rate_limited", False, True)
    assert mapped(400, "This model's maximum context length is 8192 tokens") == (
        400, "context_length_exceeded", False, False)  # fmt: skip
    assert mapped(422) == (422, "invalid_value", False, False)
    assert mapped(500) == (502, "upstream_error", True, True)
    assert mapped(503) == (503, "upstream_overloaded", True, True)
    assert mapped(529) == (503, "upstream_overloaded", False, True), "Anthropic's 529 is busy, not broken"
    assert KEY not in from_status(500, {"error": {"message": f"bad key {KEY}"}}, "m", (KEY,), None).message
    assert "sk-ab" not in redact("Incorrect API key provided: sk-ab***wxyz")


# ---- through the router -----------------------------------------------------------------------


async def test_an_api_pool_answers_priced_from_its_usage_with_the_key_sent_upstream(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    resp = await client.post("/v1/chat/completions", json=chat(UP, top_k=3, max_tokens=5))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["model"] == UP and body["choices"][0]["message"]["content"] == "stub answer"
    assert body["usage"]["cost_usd"] == pytest.approx((7 * 3.0 + 2 * 6.0) / 1e6)
    call = stub.script.calls[-1]
    assert call["headers"]["authorization"] == f"Bearer {KEY}"
    assert call["body"]["model"] == "upstream-model" and "top_k" not in call["body"]
    cards = (await client.get("/v1/models")).json()["data"]
    assert {"id": UP, "type": "provider", "provider": "openai_compatible"}.items() <= next(
        c for c in cards if c["id"] == UP
    ).items()
    assert stub.url not in json.dumps(cards)


async def test_an_api_pool_streams_with_usage_when_asked(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    payloads = await stream_payloads(client, chat(UP, stream_options={"include_usage": True}))
    assert "".join(p["choices"][0]["delta"].get("content") or "" for p in payloads if p["choices"]) == "stub answer"
    assert all(p["model"] == UP for p in payloads)
    assert payloads[-1]["usage"]["completion_tokens"] == 2 and payloads[-1]["usage"]["cost_usd"] > 0
    assert stub.script.calls[-1]["body"]["stream_options"] == {"include_usage": True}
    quiet = await stream_payloads(client, chat(UP))
    assert all("usage" not in p for p in quiet), "usage stays hidden unless the client asked"


async def test_an_openai_client_reaches_an_anthropic_upstream(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    resp = await client.post("/v1/chat/completions", json=chat(CLAUDE, max_tokens=20))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "stub answer" and body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 10 and body["usage"]["prompt_tokens_details"]["cached_tokens"] == 3
    call = stub.script.calls[-1]
    assert call["path"] == "/v1/messages" and call["headers"]["x-api-key"] == KEY
    assert call["headers"]["anthropic-version"] == "2023-06-01" and call["body"]["max_tokens"] == 20
    payloads = await stream_payloads(client, chat(CLAUDE, stream_options={"include_usage": True}))
    calls = [tc for p in payloads if p["choices"] for tc in p["choices"][0]["delta"].get("tool_calls") or []]
    assert "".join(tc["function"]["arguments"] for tc in calls) == '{"city": "Oslo"}'
    assert payloads[-1]["usage"]["completion_tokens"] == 9
    completions = await client.post("/v1/completions", json={"model": CLAUDE, "prompt": "x"})
    assert_openai_error(completions, 400, "unsupported_endpoint")


async def test_an_anthropic_client_reaches_an_openai_upstream(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    resp = await client.post(
        "/v1/messages",
        json={"model": UP, "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]},
        headers={"anthropic-version": "2023-06-01"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["content"][0]["text"] == "stub answer" and resp.json()["usage"]["output_tokens"] == 2


async def test_429_is_passed_on_with_retry_after_and_a_retry_can_hide_a_blip(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    stub.set(mode="429", retry_after="7")
    resp = await client.post("/v1/chat/completions", json=chat(UP))
    error = assert_openai_error(resp, 429, "upstream_rate_limited")
    assert error["type"] == "rate_limit_error" and resp.headers["retry-after"] == "7"
    stub.set(mode="ok", fail_first=1, fail_status=503, retry_after=None)
    retrying, _ = router_client(stub, monkeypatch, provider={"max_retries": 1})
    calls = len(stub.script.calls)
    assert (await retrying.post("/v1/chat/completions", json=chat(UP))).status_code == 200
    assert len(stub.script.calls) - calls == 2, "one failed attempt, one retry"


async def test_upstream_failures_never_show_the_key(stub, monkeypatch, caplog) -> None:
    caplog.set_level("DEBUG")
    client, _ = router_client(stub, monkeypatch, provider={"max_retries": 1})
    for status, code in ((500, "upstream_error"), (401, "upstream_auth_failed")):
        stub.set(mode=str(status), error_message=f"Incorrect API key provided: {KEY}")
        resp = await client.post("/v1/chat/completions", json=chat(UP))
        assert_openai_error(resp, 502, code)
        assert KEY not in resp.text and "sk-" not in resp.text
    assert caplog.records and KEY not in caplog.text, "nothing logged carries the key"


async def test_a_missing_key_is_a_503_naming_the_variable(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch, provider={"api_key_env": "LLM_SERVE_UNIT_NOT_SET"})
    resp = await client.post("/v1/chat/completions", json=chat(UP))
    error = assert_openai_error(resp, 503, "upstream_not_configured")
    assert "LLM_SERVE_UNIT_NOT_SET" in error["message"] and not stub.script.calls


async def test_fallbacks_cross_from_an_engine_pool_to_an_api_pool_and_back(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch, engine=Engine(A, fail=True), routing={"fallbacks": {A: [UP], UP: [A]}})
    resp = await client.post("/v1/chat/completions", json=chat(A))
    assert resp.status_code == 200 and resp.json()["model"] == UP and resp.headers[h.MODEL] == UP
    healthy, _ = router_client(stub, monkeypatch, routing={"fallbacks": {UP: [A]}})
    stub.set(mode="500")
    resp = await healthy.post("/v1/chat/completions", json=chat(UP))
    assert resp.status_code == 200 and resp.json()["model"] == A, "the API pool failed over to the engine"
    stub.set(mode="429")
    resp = await healthy.post("/v1/chat/completions", json=chat(UP))
    assert resp.status_code == 200 and resp.json()["model"] == A, "a rate-limited upstream hands over too"
    stub.set(mode="400")
    resp = await healthy.post("/v1/chat/completions", json=chat(UP))
    assert resp.status_code == 400, "a bad request is the client's, not a reason to try elsewhere"


async def test_a_broken_upstream_trips_its_breaker_and_recovers(stub, monkeypatch) -> None:
    client, _ = router_client(
        stub,
        monkeypatch,
        routing={"breaker_failures": 2, "breaker_probe_interval_s": 0.2, "breaker_probe_timeout_s": 2},
    )
    stub.set(mode="down")
    for _ in range(2):
        assert_openai_error(await client.post("/v1/chat/completions", json=chat(UP)), 503, "upstream_overloaded")
    calls = len(stub.script.calls)
    fast = await client.post("/v1/chat/completions", json=chat(UP))
    assert_openai_error(fast, 503, "engine_unavailable")
    assert len(stub.script.calls) == calls, "an open breaker answers without calling the upstream"
    stub.set(mode="ok")
    for _ in range(50):
        await asyncio.sleep(0.1)
        resp = await client.post("/v1/chat/completions", json=chat(UP))
        if resp.status_code == 200:
            break
    assert resp.status_code == 200, "a probe closed the breaker once the upstream answered again"


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ({"id": "m"}, "needs a `source`"),
        ({"id": "m", "provider": {"kind": "openai_compatible"}}, "base_url is required"),
        ({"id": "m", "provider": {"kind": "openai"}, "lora": {"enabled": True}}, "LoRA adapters need an engine"),
    ],
)
def test_a_model_is_an_engine_pool_or_an_api_pool(model: dict[str, Any], message: str) -> None:
    from llm_serve.config import ConfigError

    with pytest.raises(ConfigError, match=message):
        parse_config({"models": [model]})
    config = parse_config({"models": [{"id": "e", "source": "x"}, {"id": "p", "provider": {"kind": "anthropic"}}]})
    assert [m.id for m in config.engine_models] == ["e"] and config.model("p").provider.url().endswith(
        "anthropic.com/v1"
    )


async def test_a_budget_reservation_holds_for_an_api_pool(stub, monkeypatch) -> None:
    """The upstream's output is bounded by the max_tokens llm-serve sends (`default_max_tokens` when the request
    names none), and the reservation counts that bound at the API pool's price, not an engine's context."""
    from tests.unit.fakes import auth, keys_config

    client, _ = router_client(stub, monkeypatch, provider={"default_max_tokens": 4096}, **keys_config(budget_usd=0.01))
    unbounded = await client.post("/v1/chat/completions", json=chat(UP), headers=auth("alice"))
    assert_openai_error(unbounded, 429, "insufficient_quota")  # 4096 tokens at $6/1M could cost $0.025
    assert not stub.script.calls
    bounded = await client.post("/v1/chat/completions", json=chat(UP, max_tokens=5), headers=auth("alice"))
    assert bounded.status_code == 200, bounded.text
    free, _ = router_client(stub, monkeypatch, provider={"default_max_tokens": 777})
    assert (await free.post("/v1/chat/completions", json=chat(UP))).status_code == 200
    assert stub.script.calls[-1]["body"]["max_tokens"] == 777


async def test_a_stream_cut_by_the_upstream_ends_with_an_error_event_and_is_priced(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    stub.set(cut_after=2)
    async with client.stream("POST", "/v1/chat/completions", json=chat(UP, stream=True)) as resp:
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "upstream_error" and "mid-stream" in error["message"]
    assert "stub " in "".join(lines[:-2]), "what arrived before the cut was relayed"


async def test_an_upstream_body_that_is_not_json_is_a_502(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch)
    stub.set(garbage=True)
    assert_openai_error(await client.post("/v1/chat/completions", json=chat(UP)), 502, "upstream_error")


@pytest.mark.parametrize("model", [UP, CLAUDE])
async def test_a_stream_that_stops_without_its_end_is_not_passed_off_as_complete(stub, monkeypatch, model) -> None:
    client, _ = router_client(stub, monkeypatch)
    stub.set(truncate=3)
    async with client.stream("POST", "/v1/chat/completions", json=chat(model, stream=True)) as resp:
        lines = [line async for line in resp.aiter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["error"]["code"] == "upstream_error"


async def test_an_error_the_upstream_sends_with_200_is_its_error_not_an_answer(stub, monkeypatch) -> None:
    client, _ = router_client(stub, monkeypatch, routing={"fallbacks": {CLAUDE: [A]}})
    stub.set(error_in_200={"type": "overloaded_error", "message": "Overloaded"})
    plain = await client.post("/v1/chat/completions", json=chat(CLAUDE))
    assert plain.status_code == 200 and plain.json()["model"] == A, "an overloaded upstream hands over"
    streamed = await stream_payloads(client, chat(CLAUDE))
    assert {p["model"] for p in streamed} == {A}, "an error before any output is an error, not a 200 stream"
    alone, _ = router_client(stub, monkeypatch)
    assert_openai_error(await alone.post("/v1/chat/completions", json=chat(CLAUDE)), 503, "upstream_overloaded")


async def test_openai_gets_max_completion_tokens_and_images_are_reserved(stub, monkeypatch) -> None:
    from tests.unit.fakes import auth, keys_config

    config = parse_config(
        {
            "models": [{"id": "gpt", "provider": {"kind": "openai", "base_url": f"{stub.url}/v1", "max_retries": 0},
                        "price": {"input_per_1m": 10.0, "output_per_1m": 10.0}}],
            "embedding_models": [],
            **keys_config(budget_usd=0.01),
        }
    )  # fmt: skip
    app = Router(config, {}, {}, None, state=RouterState(config)).build_asgi_app()
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    resp = await http.post("/v1/chat/completions", json=chat("gpt", max_tokens=3), headers=auth("alice"))
    assert resp.status_code == 200, resp.text
    assert (
        stub.script.calls[-1]["body"]["max_completion_tokens"] == 3
        and "max_tokens" not in stub.script.calls[-1]["body"]
    )
    image = {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
    many = {"role": "user", "content": [{"type": "text", "text": "what?"}] + [image] * 1000}
    body = {"model": "gpt", "messages": [many], "max_tokens": 3}
    refused = await http.post("/v1/chat/completions", json=body, headers=auth("alice"))
    assert_openai_error(refused, 429, "insufficient_quota")  # 1000 images x 1600 tokens at $10/1M: $16
