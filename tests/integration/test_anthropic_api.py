"""The Anthropic Messages API on the real stack with the unmodified anthropic SDK: the quickstart with only
`base_url` changed, streamed and not, `count_tokens` against what the engine counted, errors in
Anthropic's shape, tools.
"""

from __future__ import annotations

import uuid

import anthropic
import pytest

from tests.integration.test_tool_calls import WEATHER

pytestmark = pytest.mark.integration

NONCE = uuid.uuid4().hex[:8]
# Anthropic's field; this SDK version (2.16) no longer types `temperature`, so it goes in the body as is.
GREEDY = {"temperature": 0}


@pytest.fixture(scope="module")
def claude(stack, monkeypatch_module):
    monkeypatch_module.setenv("ANTHROPIC_API_KEY", "not-needed")  # the open local stack takes any key
    return anthropic.Anthropic(base_url=stack.url, timeout=300, max_retries=0)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_quickstart_with_only_base_url_changed(stack, claude) -> None:
    # Anthropic's own example; `claude-sonnet-4-5` is a routing alias of the served model in the config.
    # Only max_tokens differs (1024 there): SmolLM2 on a CPU would spend minutes of CI filling it.
    message = claude.messages.create(
        model="claude-sonnet-4-5",
        max_tokens=96,
        messages=[{"role": "user", "content": f"Hello, Claude ({NONCE})"}],
    )
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "text" and message.content[0].text.strip()
    assert message.stop_reason in {"end_turn", "max_tokens"}
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_count_tokens_matches_what_the_engine_counted(stack, claude) -> None:
    ask = {
        "model": stack.model,
        "system": "You are terse.",
        "messages": [{"role": "user", "content": f"Name a planet. ({NONCE})"}],
    }
    counted = claude.messages.count_tokens(**ask)
    message = claude.messages.create(**ask, max_tokens=8, extra_body=GREEDY)
    assert counted.input_tokens == message.usage.input_tokens


def test_stream_events_and_final_message(stack, claude) -> None:
    with claude.messages.stream(
        model=stack.model,
        max_tokens=16,
        stop_sequences=["\n\n"],
        messages=[{"role": "user", "content": f"Count from one to five. ({NONCE})"}],
    ) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "content_block_delta" in kinds and "message_delta" in kinds
    assert final.content[0].text.strip()
    assert final.stop_reason in {"end_turn", "max_tokens", "stop_sequence"}
    assert final.usage.input_tokens > 0 and 0 < final.usage.output_tokens <= 16


def test_errors_are_anthropic_shaped(stack, claude) -> None:
    with pytest.raises(anthropic.NotFoundError) as err:
        claude.messages.create(model="no-such-model", max_tokens=8, messages=[{"role": "user", "content": "hi"}])
    assert err.value.body["type"] == "error" and err.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as err:
        claude.messages.create(model=stack.model, max_tokens=8, messages=[])
    assert err.value.body["error"]["type"] == "invalid_request_error"


def test_tool_use_round_trip(stack, claude) -> None:
    tool = {
        "name": "get_weather",
        "description": WEATHER["function"]["description"],
        "input_schema": WEATHER["function"]["parameters"],
    }
    ask = [{"role": "user", "content": f"Weather in Paris? ({NONCE})"}]
    message = claude.messages.create(
        model=stack.model, max_tokens=64, extra_body=GREEDY, tools=[tool], tool_choice={"type": "any"}, messages=ask
    )
    use = next(block for block in message.content if block.type == "tool_use")
    assert use.name == "get_weather" and "city" in use.input and message.stop_reason == "tool_use"
    follow = claude.messages.create(
        model=stack.model,
        max_tokens=24,
        extra_body=GREEDY,
        tools=[tool],
        messages=[
            *ask,
            {"role": "assistant", "content": [block.model_dump() for block in message.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "21 C, sunny"}]},
        ],
    )
    assert follow.content
