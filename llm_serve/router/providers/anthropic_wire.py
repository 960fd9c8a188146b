"""An OpenAI chat request as an Anthropic Messages request, and Anthropic's answers back as chat.

The reverse of router/apis (which lets Anthropic clients call OpenAI-shaped pools): here an OpenAI
client, or an Anthropic client whose request the router already turned into chat, reaches a model
served by Anthropic's API. What maps:

- `system` messages become the top-level `system`; `tool` messages become `tool_result` blocks in a
  user turn; assistant `tool_calls` become `tool_use` blocks; consecutive turns of one role merge
  (the Messages API wants user and assistant to alternate); image parts become image blocks;
- `max_tokens` (required by Anthropic: the provider's `default_max_tokens` when absent), `stop` as
  `stop_sequences`, `temperature`, `top_p`, `top_k`, `user` as `metadata.user_id`; tools and
  `tool_choice` (`auto`, `required` as `any`, `none`, a named function as `tool`), and
  `parallel_tool_calls: false` as `disable_parallel_tool_use`;
- answers: text blocks joined into `content`, `tool_use` blocks as `tool_calls`, `stop_reason` as
  `finish_reason`, usage with cache reads as `prompt_tokens_details.cached_tokens`;
- streams: Anthropic's events (message_start, content_block_*, message_delta, message_stop) as chat
  chunks, the usage in a last chunk without choices (what `include_usage` gives).

What Anthropic's API cannot do is refused with a 400 naming the parameter (`n` above 1, `logprobs`,
a JSON schema `response_format`), as OpenAI refuses what it does not support.
"""

from __future__ import annotations

import json
import time
from typing import Any

from llm_serve.config import ProviderConfig
from llm_serve.router.providers.errors import UpstreamError
from llm_serve.router.providers.openai_wire import request_fields

FINISH_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
    "model_context_window_exceeded": "length",
    "pause_turn": "stop",
}


def _refuse(param: str, why: str) -> UpstreamError:
    return UpstreamError(
        400,
        f"{param}: {why} by the Anthropic API this model is served from",
        code="unsupported_parameter",
        param=param,
        counts=False,
        falls_back=False,
    )


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text")
    return "" if content is None else str(content)


def _image(part: dict[str, Any]) -> dict[str, Any]:
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:") and ";base64," in url:
        media, data = url[5:].split(";base64,", 1)
        return {"type": "image", "source": {"type": "base64", "media_type": media, "data": data}}
    return {"type": "image", "source": {"type": "url", "url": url}}


def _blocks(content: Any) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for part in content or []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text":
            blocks.append({"type": "text", "text": str(part.get("text", ""))})
        elif part.get("type") == "image_url":
            blocks.append(_image(part))
    return blocks


def _tool_use(call: dict[str, Any], n: int) -> dict[str, Any]:
    function = call.get("function") or {}
    try:
        arguments = json.loads(function.get("arguments") or "{}")
    except ValueError:
        arguments = {"arguments": function.get("arguments")}
    return {
        "type": "tool_use",
        "id": call.get("id") or f"toolu_{n}",
        "name": function.get("name", ""),
        "input": arguments if isinstance(arguments, dict) else {"value": arguments},
    }


def messages_of(chat_messages: list[dict[str, Any]]) -> tuple[str | None, list[dict[str, Any]]]:
    """The `system` text and the alternating user/assistant turns of a chat conversation."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in chat_messages:
        role = message.get("role")
        if role in ("system", "developer"):
            system.append(_text(message.get("content")))
            continue
        if role == "tool":
            role, blocks = (
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": message.get("tool_call_id") or "",
                        "content": _text(message.get("content")),
                    }
                ],
            )
        elif role == "assistant":
            blocks = _blocks(message.get("content")) + [
                _tool_use(c, n) for n, c in enumerate(message.get("tool_calls") or [])
            ]
        else:
            role, blocks = "user", _blocks(message.get("content"))
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return ("\n\n".join(s for s in system if s) or None), turns


def _tools(fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tools = fields.get("tools")
    if tools:
        out["tools"] = [
            {
                "name": t["function"]["name"],
                "description": t["function"].get("description") or "",
                "input_schema": t["function"].get("parameters") or {"type": "object", "properties": {}},
            }
            for t in tools
            if isinstance(t, dict) and t.get("function")
        ]
    choice = fields.get("tool_choice")
    mapped: dict[str, Any] | None = None
    if choice == "auto":
        mapped = {"type": "auto"}
    elif choice == "required":
        mapped = {"type": "any"}
    elif choice == "none":
        mapped = {"type": "none"}
    elif isinstance(choice, dict) and choice.get("function"):
        mapped = {"type": "tool", "name": choice["function"].get("name", "")}
    if fields.get("parallel_tool_calls") is False and tools:
        mapped = {**(mapped or {"type": "auto"}), "disable_parallel_tool_use": True}
    if mapped is not None and tools:
        out["tool_choice"] = mapped
    return out


def upstream_body(body: Any, provider: ProviderConfig, upstream_model: str) -> dict[str, Any]:
    fields = request_fields(body)
    if (fields.get("n") or 1) > 1:
        raise _refuse("n", "more than one choice is not supported")
    if fields.get("logprobs"):
        raise _refuse("logprobs", "log probabilities are not offered")
    response_format = fields.get("response_format") or {}
    if isinstance(response_format, dict) and response_format.get("type") not in (None, "text"):
        raise _refuse("response_format", "structured output is not supported")
    system, turns = messages_of(fields.get("messages") or [])
    out: dict[str, Any] = {
        "model": upstream_model,
        "messages": turns,
        "max_tokens": fields.get("max_completion_tokens") or fields.get("max_tokens") or provider.default_max_tokens,
    }
    if system:
        out["system"] = system
    stop = fields.get("stop")
    if stop:
        out["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
    for name in ("temperature", "top_p", "top_k"):
        if fields.get(name) is not None:
            out[name] = fields[name]
    if fields.get("user"):
        out["metadata"] = {"user_id": str(fields["user"])}
    out.update(_tools(fields))
    if fields.get("stream"):
        out["stream"] = True
    return out


def chat_usage(usage: dict[str, Any] | None) -> dict[str, Any]:
    """Anthropic usage as chat usage: cache reads and writes are prompt tokens too (and reads are cheaper)."""
    usage = usage or {}
    cached = int(usage.get("cache_read_input_tokens") or 0)
    prompt = int(usage.get("input_tokens") or 0) + cached + int(usage.get("cache_creation_input_tokens") or 0)
    completion = int(usage.get("output_tokens") or 0)
    out: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        out["prompt_tokens_details"] = {"cached_tokens": cached}
    return out


def chat_completion(message: dict[str, Any], model_id: str) -> dict[str, Any]:
    text, calls = [], []
    for block in message.get("content") or []:
        if block.get("type") == "text":
            text.append(block.get("text", ""))
        elif block.get("type") == "tool_use":
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": json.dumps(block.get("input") or {})},
                }
            )
    reply: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    return {
        "id": message.get("id") or "msg",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": reply,
                "logprobs": None,
                "finish_reason": FINISH_REASONS.get(message.get("stop_reason") or "", "stop"),
            }
        ],
        "usage": chat_usage(message.get("usage")),
    }


class ChunkStream:
    """Anthropic stream events in, chat chunks out (each a dict), for one streamed message."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.id = "msg"
        self.created = int(time.time())
        self.usage: dict[str, Any] = {}
        self.tool_of_block: dict[int, int] = {}  # content block index -> tool call index
        self.finished = False

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model_id,
            "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
        }

    def feed(self, kind: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        """The chat chunks for one Anthropic event; an `error` event comes back as {"error": ...}."""
        if kind == "message_start":
            message = data.get("message") or {}
            self.id = message.get("id") or self.id
            self.usage.update(message.get("usage") or {})
            return [self._chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            block = data.get("content_block") or {}
            if block.get("type") == "tool_use":
                index = self.tool_of_block[int(data.get("index", 0))] = len(self.tool_of_block)
                call = {
                    "index": index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                return [self._chunk({"tool_calls": [call]})]
            if block.get("type") == "text" and block.get("text"):
                return [self._chunk({"content": block["text"]})]
            return []
        if kind == "content_block_delta":
            delta = data.get("delta") or {}
            if delta.get("type") == "text_delta":
                return [self._chunk({"content": delta.get("text", "")})]
            if delta.get("type") == "input_json_delta":
                index = self.tool_of_block.get(int(data.get("index", 0)))
                if index is None:  # arguments for a block that opened no tool call
                    return []
                call = {"index": index, "function": {"arguments": delta.get("partial_json", "")}}
                return [self._chunk({"tool_calls": [call]})]
            return []
        if kind == "message_delta":
            self.usage.update(data.get("usage") or {})
            reason = (data.get("delta") or {}).get("stop_reason")
            self.finished = True
            usage_chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model_id,
                "choices": [],
                "usage": chat_usage(self.usage),
            }
            return [self._chunk({}, FINISH_REASONS.get(reason or "", "stop")), usage_chunk]
        if kind == "error":
            return [{"error": data.get("error") or data}]
        return []  # ping, content_block_stop, message_stop
