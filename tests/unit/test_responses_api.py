"""The Responses API over stand-in engines, through the unmodified openai SDK.

What must hold: the SDK reads our objects and events (`output_text`, typed stream events), a
conversation continues from `previous_response_id` on another router replica, stored responses are
per key and go away on DELETE, and translation reaches the engine as the chat request it means.
The live-stack version (SmolLM2, two Serve replicas) is tests/integration/test_responses_api.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import openai
import pytest

from tests.unit.fakes import KEYS, A, Engine, build, build_app, chat_response, keys_config, sse


def sdk(app: Any, key: str = "sk-none") -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
    return openai.AsyncOpenAI(base_url="http://test/v1", api_key=key, http_client=http, max_retries=0)


def messages_of(engine: Engine) -> list[dict[str, Any]]:
    return [m if isinstance(m, dict) else m.model_dump(exclude_none=True) for m in engine.calls[-1][1].messages]


class ToolEngine(Engine):
    """Answers every request with one call of `get_weather`, streamed in two argument pieces."""

    async def _results(self, body: Any) -> AsyncIterator[Any]:
        call = {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
        }
        if not body.stream:
            response = chat_response("")
            response.choices[0].message.content = None
            response.choices[0].message.tool_calls = [call]
            response.choices[0].finish_reason = "tool_calls"
            yield response
            return
        head = {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": A}
        first = {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
        yield [sse({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]}}]})]
        for piece in ('{"city": ', '"Oslo"}'):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            yield [sse({**head, "choices": [{"index": 0, "delta": delta}]})]
        usage = {"prompt_tokens": 30, "completion_tokens": 9, "total_tokens": 39}
        yield [
            sse({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}),
            sse({**head, "choices": [], "usage": usage}),
            "data: [DONE]\n\n",
        ]


async def test_create_is_read_by_the_sdk_and_ledgered_as_responses() -> None:
    app, engines, state = build_app()
    client = sdk(app)
    resp = await client.responses.create(model=A, input="hi", instructions="Be brief.", max_output_tokens=20)
    assert resp.output_text == f"answer from {A}"
    assert resp.status == "completed" and resp.id.startswith("resp_")
    assert resp.usage is not None and (resp.usage.input_tokens, resp.usage.output_tokens) == (5, 1)
    assert messages_of(engines[A]) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
    ]
    assert engines[A].calls[-1][1].max_tokens == 20
    row = (await state.recent(1))[0]
    assert (row["api"], row["status"], row["completion_tokens"]) == ("responses", 200, 1)


async def test_previous_response_id_continues_on_another_replica() -> None:
    """Two routers over one ledger database (as two Serve replicas): the second continues the first."""
    first_app, _, _ = build_app()
    second_app, engines, _ = build_app()
    first = await sdk(first_app).responses.create(model=A, input="My name is Ada.", instructions="Be kind.")
    second = await sdk(second_app).responses.create(model=A, input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    # Instructions are not carried over (as OpenAI documents); the turns are.
    assert messages_of(engines[A]) == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": f"answer from {A}"},
        {"role": "user", "content": "What is my name?"},
    ]
    again = await sdk(first_app).responses.retrieve(second.id)
    assert again.output_text == second.output_text


async def test_unknown_previous_response_is_a_404_and_reaches_no_engine() -> None:
    app, engines, _ = build_app()
    with pytest.raises(openai.NotFoundError) as err:
        await sdk(app).responses.create(model=A, input="hi", previous_response_id="resp_nope")
    assert err.value.body["code"] == "previous_response_not_found"
    assert err.value.body["param"] == "previous_response_id"
    assert engines[A].calls == []


async def test_stored_responses_belong_to_their_key_and_delete() -> None:
    app, _, _ = build_app(keys_config())
    alice, bob = sdk(app, KEYS["alice"]), sdk(app, KEYS["bob"])
    resp = await alice.responses.create(model=A, input="secret")
    assert (await alice.responses.retrieve(resp.id)).output_text == resp.output_text
    with pytest.raises(openai.NotFoundError):
        await bob.responses.retrieve(resp.id)
    with pytest.raises(openai.NotFoundError):
        await bob.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):  # bob cannot continue alice's conversation either
        await bob.responses.create(model=A, input="tell me", previous_response_id=resp.id)
    await alice.responses.delete(resp.id)
    with pytest.raises(openai.NotFoundError):
        await alice.responses.retrieve(resp.id)


async def test_store_false_keeps_nothing() -> None:
    app, _, _ = build_app()
    client = sdk(app)
    resp = await client.responses.create(model=A, input="hi", store=False)
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(resp.id)


async def test_stream_events_in_openai_order_and_the_streamed_response_is_stored() -> None:
    app, _, state = build_app()
    client = sdk(app)
    events = [event async for event in await client.responses.create(model=A, input="hi", stream=True)]
    kinds = [e.type for e in events]
    assert kinds[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert kinds[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    done = events[-1].response
    assert text == done.output_text == f"answer from {A}"
    assert done.usage is not None and (done.usage.input_tokens, done.usage.output_tokens) == (10, 4)
    assert (await client.responses.retrieve(done.id)).output_text == text
    row = (await state.recent(1))[0]
    assert (row["api"], row["completion_tokens"]) == ("responses", 4)


async def test_function_tools_translate_both_ways_streamed_and_not() -> None:
    app, engines, _ = build_app(engines={A: ToolEngine(A)})
    client = sdk(app)
    tool = {
        "type": "function",
        "name": "get_weather",
        "description": "Weather for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
    resp = await client.responses.create(model=A, input="Weather in Oslo?", tools=[tool], tool_choice="required")
    body = engines[A].calls[-1][1]
    assert body.tool_choice == "required"
    assert body.tools[0].function.name == "get_weather"
    (call,) = resp.output
    assert (call.type, call.name, json.loads(call.arguments)) == ("function_call", "get_weather", {"city": "Oslo"})

    events = [
        e
        async for e in await client.responses.create(
            model=A,
            input="Weather?",
            tools=[tool],
            tool_choice={"type": "function", "name": "get_weather"},
            stream=True,
        )
    ]
    assert engines[A].calls[-1][1].tool_choice.function.name == "get_weather"
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert "".join(pieces) == '{"city": "Oslo"}'
    final = events[-1].response.output[0]
    assert (final.type, final.call_id, final.arguments) == ("function_call", "call_1", '{"city": "Oslo"}')

    # The tool's result comes back as input items: the engine sees the call and the tool message.
    await client.responses.create(
        model=A,
        previous_response_id=resp.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "12 C, rain"}],
    )
    sent = messages_of(engines[A])
    assert sent[-2]["tool_calls"][0]["function"]["name"] == "get_weather"
    assert sent[-1] == {"role": "tool", "tool_call_id": call.call_id, "content": "12 C, rain"}


async def test_text_format_becomes_response_format() -> None:
    app, engines, _ = build_app()
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    await sdk(app).responses.create(
        model=A, input="a?", text={"format": {"type": "json_schema", "name": "answer", "schema": schema}}
    )
    fmt = engines[A].calls[-1][1].response_format
    assert fmt.type == "json_schema" and fmt.json_schema.name == "answer"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools"),
        ({"input": "hi", "reasoning": {"effort": "high"}}, 400, "reasoning"),
        ({"input": [{"type": "message", "role": "robot", "content": "x"}]}, 400, "input[0].role"),
        ({"input": [{"type": "file_search_call"}]}, 400, "input[0].type"),
        ({"input": "hi", "text": {"format": {"type": "json_schema"}}}, 400, "text.format.schema"),
        # Schema violations are 422s, as on chat.
        ({"input": "hi", "temprature": 0.1}, 422, "temprature"),
        ({"input": 7}, 422, "input"),
    ],
)
async def test_what_cannot_be_served_is_refused_naming_it(body: dict[str, Any], status: int, param: str) -> None:
    client, engines, _ = build()
    resp = await client.post("/v1/responses", json={"model": A, **body})
    assert resp.status_code == status, resp.text
    assert param in (resp.json()["error"]["param"] or "")
    assert engines[A].calls == []
