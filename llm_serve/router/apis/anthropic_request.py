"""The Anthropic Messages request (`POST /v1/messages`) and its translation into a chat request.

Follows Anthropic's reference (and vLLM's `entrypoints/anthropic`): `system` as the first message,
content blocks `text`, `image` (base64 or URL), `tool_use` (an assistant's `tool_calls`) and
`tool_result` (a `tool` message, placed before the rest of its user turn, as chat templates expect),
`tools` with `input_schema`, `tool_choice` `auto`/`any`/`tool`/`none`, `stop_sequences`, `top_k`.
`max_tokens` is required, as at Anthropic. Server tools, documents and extended thinking need
Anthropic's own servers: refused with a 400 that names them.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_serve.router.errors import OpenAIError, invalid_body


class AnthropicTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = None
    input_schema: dict[str, Any]
    type: str | None = None


class AnthropicToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool | None = None


class AnthropicMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]


class MessagesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    max_tokens: int = Field(..., ge=1)
    messages: list[AnthropicMessage] = Field(..., min_length=1)
    system: str | list[dict[str, Any]] | None = None
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(None, ge=0, le=1)
    top_p: float | None = Field(None, ge=0, le=1)
    top_k: int | None = Field(None, ge=0)
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    metadata: dict[str, Any] | None = None
    service_tier: str | None = None
    thinking: dict[str, Any] | None = None
    # llm-serve's extensions, as on chat.
    rag: Any = None
    prompt: Any = None
    cache: bool | None = None


class CountTokensRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    messages: list[AnthropicMessage] = Field(..., min_length=1)
    system: str | list[dict[str, Any]] | None = None
    tools: list[AnthropicTool] | None = None
    tool_choice: AnthropicToolChoice | None = None
    thinking: dict[str, Any] | None = None


def parse(cls: type[BaseModel], data: dict[str, Any]) -> Any:
    try:
        req = cls.model_validate(data)
    except ValidationError as exc:
        err = invalid_body(exc.errors())
        raise OpenAIError(400, err.message, code=err.code, param=err.param) from None
    if getattr(req, "thinking", None) and req.thinking.get("type") != "disabled":
        raise OpenAIError(
            400, "extended thinking is not supported by the served models", param="thinking", code="unsupported_value"
        )
    for i, tool in enumerate(req.tools or []):
        if tool.type not in (None, "custom"):
            raise OpenAIError(
                400,
                f"tool type {tool.type!r} is not supported; only client tools are",
                code="unsupported_value",
                param=f"tools.{i}.type",
            )
    if req.tool_choice is not None and req.tool_choice.type == "tool" and not req.tool_choice.name:
        raise OpenAIError(
            400,
            "tool_choice.name is required when tool_choice.type is 'tool'",
            param="tool_choice.name",
            code="missing_required_parameter",
        )
    return req


def _text_of(block_content: Any, param: str) -> str:
    if isinstance(block_content, str):
        return block_content
    if isinstance(block_content, list):
        texts = []
        for i, block in enumerate(block_content):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise OpenAIError(
                    400,
                    f"{param}.{i}: only text blocks are supported here",
                    param=f"{param}.{i}",
                    code="unsupported_value",
                )
            texts.append(block["text"])
        return "\n".join(texts)
    if block_content is None:
        return ""
    raise OpenAIError(400, f"{param} must be a string or a list of text blocks", param=param, code="invalid_value")


def _image(block: dict[str, Any], param: str) -> dict[str, Any]:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        url = f"data:{source.get('media_type', 'image/png')};base64,{source['data']}"
    elif source.get("type") == "url" and isinstance(source.get("url"), str):
        url = source["url"]
    else:
        raise OpenAIError(
            400, f"{param}.source must be base64 data or a url", param=f"{param}.source", code="invalid_value"
        )
    return {"type": "image_url", "image_url": {"url": url}}


def _turn(message: AnthropicMessage, m: int) -> list[dict[str, Any]]:
    """One Anthropic message as chat messages: tool results first, then the turn's own content."""
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    parts: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    results: list[dict[str, Any]] = []
    for i, block in enumerate(message.content):
        param = f"messages.{m}.content.{i}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text" and isinstance(block.get("text"), str):
            parts.append({"type": "text", "text": block["text"]})
        elif kind == "image" and message.role == "user":
            parts.append(_image(block, param))
        elif kind == "tool_use" and message.role == "assistant":
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise OpenAIError(400, f"{param} needs a string id and name", param=param, code="invalid_value")
            arguments = json.dumps(block.get("input") if block.get("input") is not None else {})
            calls.append(
                {"id": block["id"], "type": "function", "function": {"name": block["name"], "arguments": arguments}}
            )
        elif kind == "tool_result" and message.role == "user":
            if not isinstance(block.get("tool_use_id"), str):
                raise OpenAIError(
                    400,
                    f"{param}.tool_use_id is required",
                    param=f"{param}.tool_use_id",
                    code="missing_required_parameter",
                )
            text = _text_of(block.get("content"), f"{param}.content")
            if block.get("is_error"):
                text = f"Error: {text}"
            results.append({"role": "tool", "tool_call_id": block["tool_use_id"], "content": text})
        elif kind in {"thinking", "redacted_thinking"} and message.role == "assistant":
            continue  # a client replaying another model's reasoning: nothing the served model can use
        else:
            raise OpenAIError(
                400,
                f"{param}: a {kind!r} block is not supported in a {message.role} message",
                param=param,
                code="unsupported_value",
            )
    out = list(results)
    if message.role == "assistant":
        text = "".join(p["text"] for p in parts)
        turn: dict[str, Any] = {"role": "assistant", "content": text or None}
        if calls:
            turn["tool_calls"] = calls
        if text or calls:
            out.append(turn)
    elif parts:
        only_text = all(p["type"] == "text" for p in parts)
        out.append({"role": "user", "content": "\n".join(p["text"] for p in parts) if only_text else parts})
    return out


def chat_messages(req: MessagesRequest | CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if req.system:
        messages.append({"role": "system", "content": _text_of(req.system, "system")})
    for m, message in enumerate(req.messages):
        messages.extend(_turn(message, m))
    return messages


def chat_tools(req: MessagesRequest | CountTokensRequest) -> dict[str, Any]:
    """`tools` and `tool_choice` in chat's shape (both absent when the request has no tools)."""
    if not req.tools or (req.tool_choice is not None and req.tool_choice.type == "none"):
        return {}
    out: dict[str, Any] = {
        "tools": [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description or "", "parameters": t.input_schema},
            }
            for t in req.tools
        ]
    }
    choice = req.tool_choice
    if choice is None or choice.type == "auto":
        out["tool_choice"] = "auto"
    elif choice.type == "any":
        out["tool_choice"] = "required"
    else:
        out["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    if choice is not None and choice.disable_parallel_tool_use:
        out["parallel_tool_calls"] = False
    return out


def chat_body(req: MessagesRequest) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": req.model,
        "messages": chat_messages(req),
        "max_tokens": req.max_tokens,
        "stream": req.stream,
        **chat_tools(req),
    }
    if req.stream:
        # Usage on every chunk: message_start reports the input tokens before the first text arrives.
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if req.stop_sequences:
        body["stop"] = req.stop_sequences
    for name in ("temperature", "top_p", "top_k"):
        value = getattr(req, name)
        if value is not None:
            body[name] = value
    if req.metadata and isinstance(req.metadata.get("user_id"), str):
        body["user"] = req.metadata["user_id"]
    for ext in ("rag", "prompt", "cache"):
        value = getattr(req, ext)
        if value is not None:
            body[ext] = value
    return body
