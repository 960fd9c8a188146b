"""Tool calling config: the parser and chat template reach vLLM's chat serving, and the bundled template
renders tools in the Hermes format the `hermes` parser reads while leaving tool-less chats as SmolLM2's own."""

import json
from pathlib import Path

import jinja2
import pytest

from llm_serve.config import BUNDLED_CHAT_TEMPLATES, parse_config
from llm_serve.engine.pool import build_llm_config

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
    "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _render(template: str, **context: object) -> str:
    env = jinja2.Environment(extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value: json.dumps(value)
    return env.from_string(template).render(**context)


def _bundled() -> str:
    return (BUNDLED_CHAT_TEMPLATES / "chatml_tools.jinja").read_text()


def test_parser_and_bundled_template_reach_the_engine() -> None:
    tools = {"parser": "hermes", "chat_template": "chatml-tools", "strict_level": "parameter"}
    model = parse_config({"models": [{"id": "m", "source": "s", "tools": tools}]}).models[0]
    kwargs = build_llm_config(model, "/models/m").engine_kwargs
    assert kwargs["enable_auto_tool_choice"] is True
    assert kwargs["tool_call_parser"] == "hermes"
    assert kwargs["tool_strict_level"] == "parameter"
    assert Path(kwargs["chat_template"]) == BUNDLED_CHAT_TEMPLATES / "chatml_tools.jinja"


def test_no_parser_leaves_vllm_defaults() -> None:
    kwargs = build_llm_config(parse_config({"models": [{"id": "m", "source": "s"}]}).models[0], "/m").engine_kwargs
    assert not {"tool_call_parser", "chat_template", "tool_strict_level"} & set(kwargs)


def test_unknown_template_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="chatml-tools"):
        parse_config({"models": [{"id": "m", "source": "s", "tools": {"chat_template": "no-such"}}]})
    own = tmp_path / "t.jinja"
    own.write_text("{{ messages }}")
    model = parse_config({"models": [{"id": "m", "source": "s", "tools": {"chat_template": str(own)}}]}).models[0]
    assert model.tools.template_path() == str(own)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}],
    ],
)
def test_without_tools_it_renders_as_smollm2(messages: list[dict[str, str]]) -> None:
    ours = _render(_bundled(), messages=messages, add_generation_prompt=True)
    assert ours == _render(SMOLLM2_TEMPLATE, messages=messages, add_generation_prompt=True)


def test_tools_calls_and_results_render_in_hermes_format() -> None:
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "18 C, sunny"},
    ]
    text = _render(_bundled(), messages=messages, tools=[WEATHER], add_generation_prompt=True)
    assert "<tools>\n" + json.dumps(WEATHER) + "\n</tools>" in text
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in text
    assert "<|im_start|>user\n<tool_response>\n18 C, sunny\n</tool_response><|im_end|>\n" in text
    assert text.endswith("<|im_start|>assistant\n")


class _CharTokenizer:
    """One token per character of the rendered template: enough to see which template was rendered."""

    def apply_chat_template(self, messages, tools=None, chat_template=None, **_: object) -> list[int]:
        text = _render(chat_template or SMOLLM2_TEMPLATE, messages=messages, tools=tools, add_generation_prompt=True)
        return [0] * len(text)


def test_reservation_counts_the_tools_block_of_the_configured_template() -> None:
    import asyncio
    from types import SimpleNamespace

    from llm_serve.router.prompt_tokens import PromptTokens

    body = SimpleNamespace(messages=[{"role": "user", "content": "Weather in Paris?"}], tools=[WEATHER])
    own = PromptTokens({"m": "/m"}, 0)
    configured = PromptTokens({"m": "/m"}, 0, {"m": str(BUNDLED_CHAT_TEMPLATES / "chatml_tools.jinja")})
    for counter in (own, configured):
        counter._tokenizers["m"] = _CharTokenizer()
    rendered = _render(_bundled(), messages=body.messages, tools=[WEATHER], add_generation_prompt=True)
    assert asyncio.run(configured.count("m", "chat", body)) == len(rendered) + 8
    assert asyncio.run(own.count("m", "chat", body)) < len(rendered)
