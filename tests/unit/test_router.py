"""The router's HTTP contract, with stand-in engine handles (pure logic; the real stack is in integration/).

What is checked here is what the router alone decides: which status and error body each bad input
gets, that rejected requests never reach an engine, and how streams are relayed.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ErrorInfo,
    ErrorResponse,
)

from llm_serve.rag.embedder import EmbeddingResult
from tests.unit.fakes import (
    EMBED,
    MODEL,
    STREAM,
    agen,
    assert_openai_error,
    awaitable,
    default_behaviour,
    make_client,
)

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


async def test_models_are_listed_and_retrievable() -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        listing = (await client.get("/v1/models")).json()
        assert [m["id"] for m in listing["data"]] == [MODEL, EMBED]
        assert listing["data"][0]["max_model_len"] == 2048
        assert (await client.get(f"/v1/models/{MODEL}")).json()["id"] == MODEL
        assert_openai_error(await client.get("/v1/models/other"), 404, "model_not_found")


async def test_unknown_model_is_404_and_never_reaches_an_engine() -> None:
    client, handle = make_client(default_behaviour)
    async with client:
        err = assert_openai_error(
            await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"}), 404, "model_not_found"
        )
        assert err["param"] == "model"
    assert handle.calls == []


@pytest.mark.parametrize(
    ("content", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (json.dumps({"messages": []}).encode(), 400, "missing_required_parameter"),
        (json.dumps({**CHAT, "messages": "hi"}).encode(), 422, "invalid_value"),
        (json.dumps({**CHAT, "max_tokens": "lots"}).encode(), 422, "invalid_value"),
    ],
)
async def test_bad_bodies_get_openai_errors(content: bytes, status: int, code: str) -> None:
    client, handle = make_client(default_behaviour)
    async with client:
        resp = await client.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})
        assert_openai_error(resp, status, code)
    assert handle.calls == []


async def test_validation_error_names_the_field() -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        err = assert_openai_error(await client.post("/v1/chat/completions", json={**CHAT, "messages": "hi"}), 422)
    assert err["param"] == "messages"
    assert "messages" in err["message"]


async def test_oversized_body_is_413_with_or_without_content_length() -> None:
    client, handle = make_client(default_behaviour, max_body_bytes=2048)
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}).encode()
    async with client:
        assert_openai_error(
            await client.post("/v1/chat/completions", content=big, headers={"content-type": "application/json"}),
            413,
            "request_too_large",
        )

        async def chunked() -> AsyncIterator[bytes]:
            for i in range(0, len(big), 1000):
                yield big[i : i + 1000]

        assert_openai_error(
            await client.post("/v1/chat/completions", content=chunked(), headers={"content-type": "application/json"}),
            413,
            "request_too_large",
        )
    assert handle.calls == []


async def test_non_streaming_response_passes_through_with_usage_and_request_id() -> None:
    client, handle = make_client(default_behaviour)
    async with client:
        resp = await client.post("/v1/chat/completions", json=CHAT, headers={"x-request-id": "abc"})
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == "abc"
    body = resp.json()
    assert body["choices"][0]["message"]["content"] == "hello"
    assert body["usage"] == {**body["usage"], "prompt_tokens": 5, "completion_tokens": 1}
    assert handle.calls[0][0] == "chat"


async def test_context_length_error_maps_to_openai_code() -> None:
    def behaviour(name: str, body: Any) -> Any:
        return agen(
            [
                ErrorResponse(
                    error=ErrorInfo(
                        message="This model's maximum context length is 2048 tokens. However, your prompt has 3000",
                        type="BadRequestError",
                        code=400,
                        param="input_tokens",
                    )
                )
            ]
        )

    client, _ = make_client(behaviour)
    async with client:
        err = assert_openai_error(
            await client.post("/v1/completions", json={"model": MODEL, "prompt": "x"}), 400, "context_length_exceeded"
        )
    assert err["type"] == "invalid_request_error"


async def test_engine_failure_is_503_not_a_traceback() -> None:
    def behaviour(name: str, body: Any) -> Any:
        return agen([RuntimeError("replica died")])

    client, _ = make_client(behaviour)
    async with client:
        err = assert_openai_error(await client.post("/v1/chat/completions", json=CHAT), 503, "engine_unavailable")
    assert "Traceback" not in err["message"]


async def _stream_lines(client: httpx.AsyncClient, body: dict) -> list[str]:
    async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        return [line async for line in resp.aiter_lines() if line]


async def test_stream_counts_usage_but_hides_it_unless_asked() -> None:
    client, handle = make_client(default_behaviour)
    async with client:
        lines = await _stream_lines(client, {**CHAT, "stream": True})
        asked = await _stream_lines(client, {**CHAT, "stream": True, "stream_options": {"include_usage": True}})
    sent_bodies = [body for _, body in handle.calls]
    assert all(b.stream_options.include_usage for b in sent_bodies), "the engine is always asked for usage"
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    assert not any('"usage"' in line for line in lines)
    usage_lines = [json.loads(line[6:]) for line in asked if '"usage"' in line]
    assert usage_lines and usage_lines[-1]["usage"]["completion_tokens"] == 2


async def test_stream_without_done_gets_one_and_midstream_failure_is_reported() -> None:
    def behaviour(name: str, body: Any) -> Any:
        return agen([STREAM[0], RuntimeError("engine crashed")])

    client, _ = make_client(behaviour)
    async with client:
        lines = await _stream_lines(client, {**CHAT, "stream": True})
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2][6:])["error"]
    assert error["code"] == "engine_error"


async def test_health_and_readiness() -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["models"] == {MODEL: "ready", EMBED: "ready"}

    def unhealthy(name: str, body: Any) -> Any:
        async def fail() -> None:
            raise RuntimeError("engine down")

        return fail()

    client, _ = make_client(unhealthy)
    async with client:
        ready = await client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "not ready"


async def test_unknown_route_is_openai_404() -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        assert_openai_error(await client.get("/v1/nothing"), 404)


async def test_embeddings_float_and_base64() -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        floats = (await client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"]})).json()
        packed = (
            await client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b"], "encoding_format": "base64"})
        ).json()
    assert [d["index"] for d in floats["data"]] == [0, 1]
    assert floats["data"][1]["embedding"] == [3.0, 4.0, 5.0]
    assert floats["usage"] == {"prompt_tokens": 4, "total_tokens": 4, "cost_usd": 0.0}
    decoded = np.frombuffer(base64.b64decode(packed["data"][1]["embedding"]), dtype="<f4")
    assert decoded.tolist() == [3.0, 4.0, 5.0]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": EMBED, "input": ""}, 400, "input"),
        ({"model": EMBED, "input": []}, 400, "input"),
        ({"model": EMBED, "input": ["ok", "  "]}, 400, "input"),
        ({"model": EMBED, "input": [[1, 2, 3]]}, 400, "input"),
        ({"model": EMBED, "input": ["a"] * 5}, 400, "input"),
        ({"model": EMBED, "input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
        ({"model": EMBED, "input": "a", "dimensions": 2}, 400, "dimensions"),
        ({"model": MODEL, "input": "a"}, 404, "model"),
        ({"model": "nope", "input": "a"}, 404, "model"),
        ({"input": "a"}, 400, "model"),
    ],
)
async def test_embedding_errors(body: dict, status: int, param: str) -> None:
    client, _ = make_client(default_behaviour)
    async with client:
        err = assert_openai_error(await client.post("/v1/embeddings", json=body), status)
    assert err["param"] == param


async def test_embedding_refusal_from_the_model_is_400() -> None:
    def refuse(name: str, texts: Any) -> Any:
        return awaitable(EmbeddingResult(None, [300], error="input[0] has 300 tokens", error_param="input"))

    client, _ = make_client(default_behaviour, embed=refuse)
    async with client:
        err = assert_openai_error(
            await client.post("/v1/embeddings", json={"model": EMBED, "input": "x"}), 400, "context_length_exceeded"
        )
    assert "300 tokens" in err["message"]
