"""The Responses API on the real stack with the unmodified openai SDK: plain and streamed, a conversation
continued on another router process from `previous_response_id`, GET and DELETE, function tools.

The second router (the `second_router` fixture) is another Serve application with the suite's own config:
a router process of its own over the same ledger database, which is where responses are stored.
"""

from __future__ import annotations

import json
import uuid

import httpx
import openai
import pytest

from tests.integration.test_tool_calls import WEATHER

pytestmark = pytest.mark.integration

NONCE = uuid.uuid4().hex[:8]


def test_create_plain_is_priced_and_ledgered(client, stack) -> None:
    raw = client.responses.with_raw_response.create(
        model=stack.model,
        input=f"Name three colours. ({NONCE})",
        instructions="Answer briefly.",
        max_output_tokens=24,
        temperature=0,
        extra_headers={"x-request-id": f"resp-{NONCE}"},
    )
    resp = raw.parse()
    assert resp.status in {"completed", "incomplete"} and resp.output_text.strip()
    assert resp.usage.input_tokens > 0 and 0 < resp.usage.output_tokens <= 24
    price = (resp.usage.input_tokens * 0.05 + resp.usage.output_tokens * 0.10) / 1e6
    assert float(raw.headers["x-llm-serve-cost-usd"]) == pytest.approx(price)
    with httpx.Client(base_url=stack.url, timeout=60) as http:
        rows = http.get("/admin/requests", params={"limit": 200}).json()["data"]
    row = next(r for r in rows if r["request_id"] == f"resp-{NONCE}")
    assert (row["api"], row["completion_tokens"]) == ("responses", resp.usage.output_tokens)


def test_stream_events_end_in_the_stored_response(client, stack) -> None:
    events = list(
        client.responses.create(model=stack.model, input=f"Count to five. ({NONCE})", max_output_tokens=16, stream=True)
    )
    assert events[0].type == "response.created" and events[-1].type in {"response.completed", "response.incomplete"}
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert text.strip() and final.output_text == text
    assert final.usage.output_tokens > 0
    assert client.responses.retrieve(final.id).output_text == text


def test_previous_response_id_across_two_router_processes(client, stack, second_router) -> None:
    other = openai.OpenAI(base_url=f"{second_router}/v1", api_key="not-needed", timeout=300, max_retries=0)
    first = client.responses.create(
        model=stack.model, input=f"My name is Ada. ({NONCE})", max_output_tokens=16, temperature=0
    )
    second = other.responses.create(
        model=stack.model,
        input="What is my name?",
        previous_response_id=first.id,
        max_output_tokens=16,
        temperature=0,
    )
    assert second.previous_response_id == first.id and second.output_text.strip()
    # The continuation's prompt holds the first turn, its answer and the new question.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    back = client.responses.retrieve(second.id)  # and the first router reads what the second stored
    assert back.output_text == second.output_text
    other.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    with pytest.raises(openai.NotFoundError) as err:
        other.responses.create(model=stack.model, input="again", previous_response_id=second.id)
    assert err.value.body["code"] == "previous_response_not_found"


def test_function_tool_through_responses(client, stack) -> None:
    tool = {"type": "function", **WEATHER["function"]}
    resp = client.responses.create(
        model=stack.model,
        input=f"Weather in Paris? ({NONCE})",
        tools=[tool],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens=64,
        temperature=0,
    )
    calls = [item for item in resp.output if item.type == "function_call"]
    assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
    follow = client.responses.create(
        model=stack.model,
        previous_response_id=resp.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "21 C and sunny"}],
        tools=[tool],
        max_output_tokens=24,
        temperature=0,
    )
    assert follow.status in {"completed", "incomplete"}
    assert follow.output_text.strip() or any(item.type == "function_call" for item in follow.output)
