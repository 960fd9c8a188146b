"""Tool calling through the router on the real stack (vLLM's Hermes parser, the bundled ChatML tools
template, strict level `parameter`), with the unmodified openai SDK: auto, required and a named function,
streamed and not, priced and cached like any request.

SmolLM2-135M rarely chooses a tool by itself (1 of 12 in benchmarks/tool_calls.py), so `auto` is held
to what the stack guarantees: it is served (not the 400 of a pool without a parser) and whatever the
model says comes back well-formed. `required` and a named function are constrained by vLLM, so they
must produce a call whose arguments are a JSON object with the required keys.
"""

from __future__ import annotations

import json
import uuid

import httpx
import pytest

pytestmark = pytest.mark.integration

NONCE = uuid.uuid4().hex[:8]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "City name"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Get the current local time in a timezone",
        "parameters": {
            "type": "object",
            "properties": {"timezone": {"type": "string"}},
            "required": ["timezone"],
        },
    },
}


def ask(stack, question: str, **extra) -> dict:
    return {
        "model": stack.model,
        "messages": [{"role": "user", "content": question}],
        "tools": [WEATHER, TIME],
        "temperature": 0,
        "max_tokens": 64,
        **extra,
    }


def the_call(message) -> tuple[str, dict]:
    assert message.tool_calls, message
    call = message.tool_calls[0]
    assert call.id and call.type == "function"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict)
    return call.function.name, arguments


@pytest.mark.parametrize(
    ("choice", "expected"),
    [("required", None), ({"type": "function", "function": {"name": "get_time"}}, "get_time")],
    ids=["required", "named"],
)
def test_constrained_choice_makes_a_call_with_its_required_arguments(client, stack, choice, expected) -> None:
    resp = client.chat.completions.create(**ask(stack, f"What's the weather in Paris? ({NONCE})", tool_choice=choice))
    name, arguments = the_call(resp.choices[0].message)
    assert name in {"get_weather", "get_time"} if expected is None else name == expected
    required = (WEATHER if name == "get_weather" else TIME)["function"]["parameters"]["required"]
    assert set(required) <= set(arguments)
    assert resp.choices[0].finish_reason in {"tool_calls", "stop"}
    assert resp.usage.prompt_tokens > 100  # the tools block was rendered into the prompt


def test_constrained_call_streams_as_tool_call_deltas(client, stack) -> None:
    body = ask(stack, f"Time in Tokyo please ({NONCE})", tool_choice="required")
    chunks = list(client.chat.completions.create(**body, stream=True, stream_options={"include_usage": True}))
    pieces = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert pieces and pieces[0].function.name in {"get_weather", "get_time"} and pieces[0].id
    arguments = json.loads("".join(p.function.arguments or "" for p in pieces))
    assert isinstance(arguments, dict) and arguments
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streamed"])
def test_auto_is_served_and_well_formed(client, stack, stream) -> None:
    body = ask(stack, f"Hello! How are you today? ({NONCE}{stream})", tool_choice="auto")
    if not stream:
        message = client.chat.completions.create(**body).choices[0].message
        assert message.content or message.tool_calls
        if message.tool_calls:
            the_call(message)
        return
    chunks = list(client.chat.completions.create(**body, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert text.strip() or calls


def test_a_tool_call_is_priced_ledgered_and_cached(stack) -> None:
    body = ask(stack, f"Weather in Oslo? ({NONCE})", tool_choice="required")
    request_id = f"tools-{NONCE}"
    with httpx.Client(base_url=stack.url, timeout=300) as http:
        miss = http.post("/v1/chat/completions", json=body, headers={"x-request-id": request_id})
        hit = http.post("/v1/chat/completions", json=body)
        rows = http.get("/admin/requests", params={"limit": 200}).json()["data"]
    assert miss.status_code == 200, miss.text
    assert (miss.headers["x-llm-serve-cache"], hit.headers["x-llm-serve-cache"]) == ("miss", "hit")
    assert hit.json()["choices"][0]["message"]["tool_calls"] == miss.json()["choices"][0]["message"]["tool_calls"]
    usage = miss.json()["usage"]
    price = (usage["prompt_tokens"] * 0.05 + usage["completion_tokens"] * 0.10) / 1e6
    assert float(miss.headers["x-llm-serve-cost-usd"]) == pytest.approx(price)
    row = next(r for r in rows if r["request_id"] == request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert row["cost_usd"] == pytest.approx(price)


def test_the_tool_result_round_trip(client, stack) -> None:
    first = client.chat.completions.create(**ask(stack, f"Weather in Rome? ({NONCE})", tool_choice="required"))
    call = first.choices[0].message.tool_calls[0]
    follow = client.chat.completions.create(
        model=stack.model,
        tools=[WEATHER, TIME],
        temperature=0,
        max_tokens=24,
        messages=[
            {"role": "user", "content": f"Weather in Rome? ({NONCE})"},
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "21 C and sunny"},
        ],
    )
    assert follow.choices[0].message.content or follow.choices[0].message.tool_calls
