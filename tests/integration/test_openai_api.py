"""The OpenAI-compatible endpoint against the real stack: Ray Serve, vLLM (CPU) and SmolLM2."""

from __future__ import annotations

import asyncio
import json

import jsonschema
import pytest

pytestmark = pytest.mark.integration

QUANTIZED_POOL = "smollm2-135m-instruct-w8a8"
GROUNDING = "To cancel your subscription, call 1-800-555-0199 or visit Settings > Billing."


def test_models_list_and_retrieve(client, stack) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids == [
        stack.model, QUANTIZED_POOL, "nimbus-support", "all-minilm-l6-v2", "gpt-4o-mini", "claude-sonnet-4-5"
    ]  # fmt: skip
    assert client.models.retrieve(stack.model).id == stack.model


def test_chat_completion(client, stack) -> None:
    resp = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Name three colours."}],
        max_tokens=24,
        temperature=0,
    )
    choice = resp.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in {"stop", "length"}
    assert resp.usage.prompt_tokens > 0 and 0 < resp.usage.completion_tokens <= 24
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens


def test_chat_stream_with_usage(client, stack) -> None:
    stream = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Count from one to five."}],
        max_tokens=16,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip()
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (
        last.usage.completion_tokens
        == len(
            [c for c in chunks if c.choices and c.choices[0].delta.content is not None and c.choices[0].delta.content]
        )
        or last.usage.completion_tokens > 0
    )
    assert sum(1 for c in chunks if c.usage is not None) == 1


def test_chat_stream_without_usage_has_no_usage_chunk(client, stack) -> None:
    chunks = list(
        client.chat.completions.create(
            model=stack.model,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=8,
            stream=True,
        )
    )
    assert chunks and all(c.usage is None for c in chunks)
    assert chunks[-1].choices[0].finish_reason in {"stop", "length"}


def test_completions_plain_and_streamed(client, stack) -> None:
    resp = client.completions.create(model=stack.model, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert resp.choices[0].text.strip()
    assert resp.usage.completion_tokens == 5 or resp.choices[0].finish_reason == "stop"
    streamed = list(
        client.completions.create(
            model=stack.model, prompt="The capital of France is", max_tokens=5, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text


def test_sampling_parameters(client, stack) -> None:
    messages = [{"role": "user", "content": "Write a sentence about the sea."}]
    # max_tokens: the answer stops at the limit and says so.
    short = client.chat.completions.create(model=stack.model, messages=messages, max_tokens=3, temperature=0)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    # seed: the same seed at temperature 1 reproduces the answer; n gives n answers.
    a = client.chat.completions.create(
        model=stack.model, messages=messages, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234, n=2
    )
    b = client.chat.completions.create(
        model=stack.model, messages=messages, max_tokens=20, temperature=1.0, top_p=0.95, seed=1234, n=2
    )
    assert len(a.choices) == 2
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    # stop: generation ends before the stop string, which is not returned.
    counted = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Count from 1 to 10, separated by commas."}],
        max_tokens=40,
        temperature=0,
        stop=["5"],
    )
    assert "5" not in counted.choices[0].message.content and counted.choices[0].finish_reason == "stop"


def test_json_schema_response_validates(client, stack) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    resp = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": "Give the capital of France as JSON."}],
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
    )
    data = json.loads(resp.choices[0].message.content)
    jsonschema.validate(data, schema)
    assert "paris" in data["city"].lower()


def test_json_object_response_parses(client, stack) -> None:
    resp = client.chat.completions.create(
        model=stack.model,
        messages=[{"role": "user", "content": 'Reply with a JSON object like {"name": "Tom", "age": 3}.'}],
        max_tokens=200,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert resp.choices[0].finish_reason == "stop", "the JSON grammar lets the model close the object"
    assert isinstance(json.loads(resp.choices[0].message.content), dict)


def test_grounded_answer_uses_the_context(client, stack) -> None:
    resp = client.chat.completions.create(
        model=stack.model,
        messages=[
            {"role": "system", "content": f"Answer the question using only this context.\nContext: {GROUNDING}"},
            {"role": "user", "content": "How do I cancel my subscription?"},
        ],
        max_tokens=60,
        temperature=0,
    )
    assert "1-800-555-0199" in resp.choices[0].message.content


async def test_concurrent_requests_all_answered(aclient, stack) -> None:
    async def ask(i: int) -> str:
        resp = await aclient.chat.completions.create(
            model=stack.model,
            messages=[{"role": "user", "content": f"Say the number {i}."}],
            max_tokens=12,
        )
        return resp.choices[0].message.content

    answers = await asyncio.wait_for(asyncio.gather(*(ask(i) for i in range(12))), timeout=240)
    assert len(answers) == 12 and all(a for a in answers)


def test_langchain_chat_openai(stack) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=stack.base_url, api_key="not-needed", model=stack.model, temperature=0, max_tokens=24)
    question = f"Context: {GROUNDING}\nQuestion: What number do I call to cancel my subscription?"
    answer = llm.invoke(question).content
    assert "1-800-555-0199" in answer
    streamed = "".join(chunk.content for chunk in llm.stream(question))
    assert streamed == answer, "greedy decoding streams the same text it returns whole"
