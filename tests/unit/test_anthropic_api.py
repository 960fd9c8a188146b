"""The Anthropic Messages API over stand-in engines, through the unmodified anthropic SDK.

What must hold: the SDK reads our messages and stream events (`get_final_message`, typed errors),
`x-api-key` authenticates, errors come in Anthropic's shape whichever layer raises them, tool blocks
translate both ways, and the chat request that reaches the engine is the one the message means.
The live-stack version (SmolLM2) is tests/integration/test_anthropic_api.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anthropic
import httpx2
import pytest

from tests.unit.fakes import KEYS, A, Engine, build, build_app, chat_response, keys_config
from tests.unit.test_responses_api import ToolEngine, messages_of


def sdk(app: Any, key: str = "sk-none", **headers: str) -> anthropic.AsyncAnthropic:
    # The anthropic SDK runs on httpx2 (a fork of httpx), so its in-process transport comes from there.
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=app), base_url="http://test")
    return anthropic.AsyncAnthropic(
        base_url="http://test", api_key=key, http_client=http, max_retries=0, default_headers=headers
    )


class StopEngine(Engine):
    """Stops on a stop sequence, reporting it as vLLM does (`stop_reason` is the matched string)."""

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        response = chat_response("one, two")
        response.choices[0].stop_reason = "three"
        yield response


async def test_create_is_read_by_the_sdk_and_ledgered_as_anthropic() -> None:
    app, engines, state = build_app()
    message = await sdk(app).messages.create(
        model=A,
        max_tokens=64,
        system="You answer in one line.",
        messages=[{"role": "user", "content": "Hello, Claude"}],
        metadata={"user_id": "u-7"},
        extra_body={"top_k": 5},  # Anthropic's field; this SDK version no longer types it
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text == f"answer from {A}"
    assert message.stop_reason == "end_turn"
    assert (message.usage.input_tokens, message.usage.output_tokens) == (5, 1)
    assert messages_of(engines[A]) == [
        {"role": "system", "content": "You answer in one line."},
        {"role": "user", "content": "Hello, Claude"},
    ]
    body = engines[A].calls[-1][1]
    assert (body.max_tokens, body.user, body.top_k) == (64, "u-7", 5)
    row = (await state.recent(1))[0]
    assert (row["api"], row["status"], row["completion_tokens"]) == ("anthropic", 200, 1)


async def test_a_matched_stop_sequence_is_reported() -> None:
    app, engines, _ = build_app(engines={A: StopEngine(A)})
    message = await sdk(app).messages.create(
        model=A, max_tokens=16, stop_sequences=["three"], messages=[{"role": "user", "content": "count"}]
    )
    assert engines[A].calls[-1][1].stop == ["three"]
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", "three")


async def test_stream_events_in_anthropic_order() -> None:
    app, _, state = build_app()
    client = sdk(app)
    async with client.messages.stream(model=A, max_tokens=32, messages=[{"role": "user", "content": "hi"}]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_start" in kinds and "content_block_stop" in kinds and "message_delta" in kinds
    assert final.content[0].text == f"answer from {A}"
    assert final.stop_reason == "end_turn"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (10, 4)
    row = (await state.recent(1))[0]
    assert (row["api"], row["completion_tokens"]) == ("anthropic", 4)


async def test_tool_use_translates_both_ways_streamed_and_not() -> None:
    app, engines, _ = build_app(engines={A: ToolEngine(A)})
    client = sdk(app)
    tool = {
        "name": "get_weather",
        "description": "Weather for a city.",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    ask = [{"role": "user", "content": "Weather in Oslo?"}]
    message = await client.messages.create(
        model=A, max_tokens=64, messages=ask, tools=[tool], tool_choice={"type": "any"}
    )
    body = engines[A].calls[-1][1]
    assert body.tool_choice == "required" and body.tools[0].function.name == "get_weather"
    (use,) = message.content
    assert (use.type, use.name, use.input) == ("tool_use", "get_weather", {"city": "Oslo"})
    assert message.stop_reason == "tool_use"

    async with client.messages.stream(
        model=A, max_tokens=64, messages=ask, tools=[tool], tool_choice={"type": "tool", "name": "get_weather"}
    ) as stream:
        final = await stream.get_final_message()
    assert engines[A].calls[-1][1].tool_choice.function.name == "get_weather"
    assert final.content[0].type == "tool_use" and final.content[0].input == {"city": "Oslo"}

    # The result goes back as a tool_result block: the engine sees the call, then the tool message.
    await client.messages.create(
        model=A,
        max_tokens=64,
        tools=[tool],
        messages=[
            *ask,
            {
                "role": "assistant",
                "content": [{"type": "tool_use", "id": use.id, "name": use.name, "input": use.input}],
            },
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": use.id, "content": "12 C, rain"},
                    {"type": "text", "text": "Should I take an umbrella?"},
                ],
            },
        ],
    )
    sent = messages_of(engines[A])
    assert sent[-3]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city": "Oslo"}'}
    assert sent[-2] == {"role": "tool", "tool_call_id": use.id, "content": "12 C, rain"}
    assert sent[-1] == {"role": "user", "content": "Should I take an umbrella?"}


async def test_x_api_key_authenticates_and_errors_are_anthropic_shaped() -> None:
    app, engines, _ = build_app(keys_config())
    ask = {"model": A, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    assert (await sdk(app, KEYS["alice"]).messages.create(**ask)).content
    with pytest.raises(anthropic.AuthenticationError) as err:
        await sdk(app, "sk-wrong").messages.create(**ask)
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "authentication_error"
    with pytest.raises(anthropic.PermissionDeniedError) as err:  # bob's key is not allowed model A
        await sdk(app, KEYS["bob"]).messages.create(**ask)
    assert err.value.body["error"]["type"] == "permission_error"
    assert len(engines[A].calls) == 1


@pytest.mark.parametrize(
    ("body", "headers", "fragment"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, {}, "max_tokens"),
        ({"max_tokens": 8, "messages": []}, {}, "messages"),
        ({"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}, {"anthropic-version": "v1"}, "version"),
        (
            {"max_tokens": 8, "messages": [{"role": "user", "content": "hi"}], "thinking": {"type": "enabled"}},
            {},
            "thinking",
        ),
        (
            {"max_tokens": 8, "messages": [{"role": "user", "content": [{"type": "document"}]}]},
            {},
            "document",
        ),
        (
            {
                "max_tokens": 8,
                "messages": [{"role": "user", "content": "hi"}],
                "tools": [{"type": "web_search_20250305", "name": "web_search", "input_schema": {}}],
            },
            {},
            "tools",
        ),
    ],
)
async def test_what_cannot_be_served_is_an_anthropic_400(
    body: dict[str, Any], headers: dict[str, str], fragment: str
) -> None:
    client, engines, _ = build()
    resp = await client.post("/v1/messages", json={"model": A, **body}, headers=headers)
    assert resp.status_code == 400, resp.text
    payload = resp.json()
    assert payload["type"] == "error" and payload["error"]["type"] == "invalid_request_error"
    assert fragment in payload["error"]["message"]
    assert engines[A].calls == []


async def test_layers_before_the_route_answer_in_anthropic_shape_too() -> None:
    client, _, _ = build()
    for resp in (
        await client.get("/v1/messages"),  # 405 from routing
        await client.post("/v1/messages", content=b"{not json"),
    ):
        assert resp.status_code in {400, 405}, resp.text
        assert resp.json()["type"] == "error", resp.text


async def test_count_tokens_counts_what_create_would_send() -> None:
    app, engines, _ = build_app()
    client = sdk(app)
    short = await client.messages.count_tokens(model=A, messages=[{"role": "user", "content": "hi"}])
    longer = await client.messages.count_tokens(
        model=A, system="Be brief.", messages=[{"role": "user", "content": "hi " * 50}]
    )
    assert 0 < short.input_tokens < longer.input_tokens
    assert engines[A].calls == []  # counting never runs the model
    with pytest.raises(anthropic.NotFoundError):
        await client.messages.count_tokens(model="nope", messages=[{"role": "user", "content": "hi"}])
