"""API pools on the real stack: vLLM's own server is the upstream, reached through its OpenAI and its
Anthropic Messages endpoints, with the unmodified openai and anthropic SDKs as clients.

The provider router (conftest.py `providers`) serves the stack's engine pool beside three API pools:
`upstream-gpt` (vLLM's server, OpenAI-compatible), `upstream-claude` (the same server through its
Anthropic endpoint, so every answer is translated both ways) and `flaky-gpt` (a scriptable server in
front of vLLM's, for the 429s, 5xx and outages no real server gives on demand). What happens when
the stack's own engine dies (fallback to `upstream-gpt` and back) is in test_faults.py, which kills it.
"""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from tests.integration.conftest import UPSTREAM_KEY

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def oai(providers):
    import openai

    return openai.OpenAI(base_url=providers.base_url, api_key="not-needed", timeout=300, max_retries=0)


def question() -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Say hello to visitor {uuid.uuid4().hex[:6]}."}]


def test_an_openai_client_is_answered_by_vllms_server_priced_and_cached(oai) -> None:
    raw = oai.chat.completions.with_raw_response.create(
        model="upstream-gpt", messages=question(), max_tokens=12, temperature=0
    )
    answer = raw.parse()
    assert answer.model == "upstream-gpt" and answer.choices[0].message.content
    assert answer.usage.completion_tokens > 0
    cost = float(raw.headers["x-llm-serve-cost-usd"])
    usage = answer.usage
    assert cost == pytest.approx((usage.prompt_tokens * 2.0 + usage.completion_tokens * 8.0) / 1e6)
    again = oai.chat.completions.with_raw_response.create(
        model="upstream-gpt", messages=[{"role": "user", "content": answer.choices[0].message.content}],
        max_tokens=12, temperature=0,
    )  # fmt: skip
    assert again.headers["x-llm-serve-cache"] == "miss"
    repeat = oai.chat.completions.with_raw_response.create(
        model="upstream-gpt", messages=[{"role": "user", "content": answer.choices[0].message.content}],
        max_tokens=12, temperature=0,
    )  # fmt: skip
    assert repeat.headers["x-llm-serve-cache"] == "hit", "an API pool's answers are cached like an engine's"
    assert repeat.parse().choices[0].message.content == again.parse().choices[0].message.content


def test_a_stream_from_the_upstream_is_relayed_with_its_usage(oai) -> None:
    stream = oai.chat.completions.create(
        model="upstream-gpt", messages=question(), max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.model == "upstream-gpt" for c in chunks)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_tools_named_required_and_auto_through_an_api_pool(oai, stream: bool) -> None:
    def call(tool_choice):
        args = dict(model="upstream-gpt", messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
                    tools=[WEATHER], tool_choice=tool_choice, max_tokens=60, temperature=0,
                    extra_body={"cache": False})  # each call reaches the upstream  # fmt: skip
        if not stream:
            choice = oai.chat.completions.create(**args).choices[0]
            calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or []]
            return calls, choice.finish_reason
        names, arguments, finish = {}, {}, None
        for chunk in oai.chat.completions.create(**args, stream=True):
            for c in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
                names[c.index] = names.get(c.index) or (c.function.name if c.function else None)
                arguments[c.index] = arguments.get(c.index, "") + ((c.function.arguments or "") if c.function else "")
            if chunk.choices and chunk.choices[0].finish_reason:
                finish = chunk.choices[0].finish_reason
        return [(names[i], arguments[i]) for i in sorted(names)], finish

    for tool_choice in ({"type": "function", "function": {"name": "get_weather"}}, "required"):
        calls, _ = call(tool_choice)
        assert calls and calls[0][0] == "get_weather", (tool_choice, calls)
        assert isinstance(json.loads(calls[0][1]).get("city"), str), calls
    calls, finish = call("auto")  # the model decides; either way the answer is well formed
    assert finish in ("tool_calls", "stop", "length") and all(json.loads(a) is not None for _, a in calls)


def test_an_anthropic_client_reaches_the_openai_shaped_upstream(providers) -> None:
    import anthropic

    claude = anthropic.Anthropic(base_url=providers.url, api_key="not-needed", max_retries=0, timeout=300)
    message = claude.messages.create(model="upstream-gpt", max_tokens=12, messages=question())
    assert message.type == "message" and message.content[0].type == "text" and message.content[0].text
    assert message.usage.output_tokens > 0
    with claude.messages.stream(model="upstream-gpt", max_tokens=12, messages=question()) as events:
        text = "".join(events.text_stream)
        final = events.get_final_message()
    assert text and final.content[0].text == text and final.usage.output_tokens > 0


def test_an_openai_client_reaches_vllms_anthropic_endpoint(oai) -> None:
    answer = oai.chat.completions.create(
        model="upstream-claude",
        messages=[{"role": "system", "content": "You are brief."}, *question()],
        max_tokens=12,
    )
    assert answer.model == "upstream-claude" and answer.choices[0].message.content
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.usage.prompt_tokens > 0
    chunks = list(
        oai.chat.completions.create(
            model="upstream-claude", messages=question(), max_tokens=12, stream=True,
            stream_options={"include_usage": True},
        )
    )  # fmt: skip
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_upstreams_429_and_5xx_reach_the_client_as_openai_errors(oai, providers) -> None:
    import openai

    stub = providers.stub
    try:
        stub.set(mode="429", retry_after="3")
        with pytest.raises(openai.RateLimitError) as limited:
            oai.chat.completions.create(model="flaky-gpt", messages=question(), max_tokens=4)
        assert limited.value.code == "upstream_rate_limited" and limited.value.response.headers["retry-after"] == "3"
        stub.set(mode="500", retry_after=None, error_message=f"Incorrect API key provided: {UPSTREAM_KEY}")
        with pytest.raises(openai.APIStatusError) as failed:
            oai.chat.completions.create(model="flaky-gpt", messages=question(), max_tokens=4)
        assert failed.value.status_code == 502 and failed.value.code == "upstream_error"
        assert UPSTREAM_KEY not in failed.value.response.text
        assert stub.script.calls[-1]["headers"]["authorization"] == f"Bearer {UPSTREAM_KEY}"
    finally:
        stub.set(mode="ok", retry_after=None, error_message=None)
    assert oai.chat.completions.create(model="flaky-gpt", messages=question(), max_tokens=4).choices


def test_a_broken_upstream_trips_its_breaker_and_recovers(providers) -> None:
    stub = providers.stub
    body = {"model": "flaky-gpt", "messages": question(), "max_tokens": 4}
    with httpx.Client(base_url=providers.base_url, timeout=120) as http:
        # An earlier test's failures may already count: the breaker opens within two failed calls.
        stub.set(mode="down")
        try:
            statuses = [http.post("/chat/completions", json=body).status_code for _ in range(2)]
            assert set(statuses) == {503}, statuses
            calls = len(stub.script.calls)
            fast = http.post("/chat/completions", json=body)
            assert fast.status_code == 503 and fast.json()["error"]["code"] == "engine_unavailable", fast.text
            assert fast.headers["retry-after"] and len(stub.script.calls) == calls, "no call to an open pool"
        finally:
            stub.set(mode="ok")
        deadline = time.monotonic() + 60
        while (resp := http.post("/chat/completions", json=body)).status_code != 200:
            assert time.monotonic() < deadline, f"the breaker never closed: {resp.text}"
            time.sleep(0.5)
        assert resp.json()["choices"][0]["message"]["content"] is not None
