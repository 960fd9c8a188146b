"""No input gets a 500 or a hang, and no request asks for unbounded work (stand-in engines).

Each case here once reached the service as a 500, a hang or a minute of engine time: deeply nested
JSON, a `stream_options` of the wrong type, a prompt alias that is a list, an empty conversation,
`n: 1000`. They now end as OpenAI-shaped 4xx before any engine is called.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from tests.unit.fakes import EMBED, A, B, assert_openai_error, auth, build, chat, keys_config, make_client


@pytest.mark.parametrize(
    ("body", "status", "code", "param"),
    [
        ("[" * 100_000 + "]" * 100_000, 400, "invalid_json", None),
        ('{"model": "model-a", "messages": [], "n": 1' + "0" * 5000 + "}", 400, "invalid_json", None),
        (json.dumps(chat(stream_options="x")), 400, "invalid_value", "stream_options"),
        (json.dumps(chat(stream=True, stream_options=[1])), 422, "invalid_value", "stream_options"),
        (json.dumps(chat(prompt={"name": "support-answer", "alias": ["x"]})), 422, "invalid_type", "prompt.alias"),
        (json.dumps(chat(prompt={"name": "support-answer", "version": {"a": 1}})), 422, "invalid_type", None),
        (json.dumps({"model": A, "messages": []}), 400, "invalid_value", "messages"),
        (json.dumps(chat(n=1000)), 400, "limit_exceeded", "n"),
        (json.dumps(chat(messages=[{"role": "user", "content": "x"}] * 600)), 400, "limit_exceeded", "messages"),
    ],
)
async def test_malformed_and_oversized_requests_get_a_4xx_and_no_engine_call(
    body: str, status: int, code: str, param: str | None
) -> None:
    client, engines, _ = build(prompts=True)
    async with client:
        resp = await client.post("/v1/chat/completions", content=body, headers={"content-type": "application/json"})
        err = assert_openai_error(resp, status, code)
    if param is not None:
        assert err["param"] == param
    assert engines[A].calls == []


async def test_a_keys_limits_tighten_the_services_and_max_tokens_gets_the_cap() -> None:
    config = {**keys_config(limits={"max_n": 2, "max_tokens": 8}), "limits": {"max_n": 4, "max_tokens": 32}}
    client, engines, _ = build(config)
    async with client:
        post = client.post
        assert_openai_error(await post("/v1/chat/completions", json=chat(n=3), headers=auth("alice")), 400)
        too_long = await post("/v1/chat/completions", json=chat(max_tokens=9), headers=auth("alice"))
        assert assert_openai_error(too_long, 400, "limit_exceeded")["param"] == "max_tokens"
        assert (await post("/v1/chat/completions", json=chat(), headers=auth("alice"))).status_code == 200
        # bob has only the service's caps: 3 choices are fine, 5 are not
        assert (await post("/v1/chat/completions", json=chat(B, n=3), headers=auth("bob"))).status_code == 200
        assert_openai_error(await post("/v1/chat/completions", json=chat(B, n=5), headers=auth("bob")), 400)
    assert [c[1].max_tokens for c in engines[A].calls] == [8]
    assert [c[1].max_tokens for c in engines[B].calls] == [32]


async def test_a_chunked_body_is_not_read_past_the_limit() -> None:
    client, engines, _ = build({"server": {"max_body_bytes": 2048}})
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"model": "model-a", "messages": [{"role": "user", "content": "'
        for _ in range(1000):
            sent += 1
            yield b"x" * 1000
        yield b'"}]}'

    async with client:
        resp = await client.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
        assert_openai_error(resp, 413, "request_too_large")
    assert sent <= 4 and engines[A].calls == []


@pytest.mark.parametrize("request_id", ["x" * 65, "has space", "semi;colon", "nl\nx"])
async def test_a_malformed_request_id_is_refused(request_id: str) -> None:
    client, engines, _ = build()
    async with client:
        try:
            resp = await client.post("/v1/chat/completions", json=chat(), headers={"x-request-id": request_id})
        except Exception:  # httpx itself refuses a header with a newline: nothing reached the router
            return
        err = assert_openai_error(resp, 400, "invalid_request_id")
    assert err["param"] == "x-request-id" and engines[A].calls == []


async def test_embeddings_inputs_are_capped() -> None:
    client, _ = make_client(lambda *_: None)  # the chat engine is never called here
    async with client:
        resp = await client.post("/v1/embeddings", json={"model": EMBED, "input": ["a", "b" * 200_000]})
        assert assert_openai_error(resp, 400, "limit_exceeded")["param"] == "input"
