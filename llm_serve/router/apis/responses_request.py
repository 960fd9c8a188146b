"""The Responses API request (`POST /v1/responses`) and its translation into a chat request.

Modelled on OpenAI's reference and vLLM's `openai/responses` server: `input` as a string or a list
of items (messages, `function_call`, `function_call_output`), `instructions` as the system message
(not carried over by `previous_response_id`, as OpenAI documents), function tools flattened,
`text.format` as `response_format`, `max_output_tokens` as `max_tokens`. Hosted tools (web or file
search, code interpreter) and reasoning items need OpenAI's own servers: they are refused with a 400
that names them, never silently dropped. Parameters that change nothing here (`include`,
`service_tier`, `truncation: disabled`, ...) are accepted; any other unknown one is a 400, so a typo
is told rather than ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llm_serve.router.errors import OpenAIError, invalid_body

TEXT_PARTS = {"input_text", "output_text", "text"}


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class FunctionTool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str = Field(..., min_length=1, max_length=64)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    previous_response_id: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    tools: list[FunctionTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedFunction | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    stream: bool = False
    store: bool = True
    metadata: dict[str, str] | None = None
    user: str | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    # Accepted, with nothing to change here.
    include: list[str] | None = None
    service_tier: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    reasoning: dict[str, Any] | None = None
    stream_options: dict[str, Any] | None = None
    prompt_cache_key: str | None = None
    safety_identifier: str | None = None
    # llm-serve's extensions, as on chat.
    rag: Any = None
    prompt: Any = None
    cache: bool | None = None


def parse_request(data: dict[str, Any]) -> ResponsesRequest:
    if "model" not in data:
        raise OpenAIError(400, "you must provide a model parameter", code="missing_required_parameter", param="model")
    tools = data.get("tools")
    for tool in tools if isinstance(tools, list) else []:
        if isinstance(tool, dict) and tool.get("type") != "function":
            raise OpenAIError(
                400,
                f"tool type {tool.get('type')!r} is not supported; only function tools are",
                code="unsupported_value",
                param="tools",
            )
    try:
        req = ResponsesRequest.model_validate(data)
    except ValidationError as exc:
        raise invalid_body(exc.errors()) from None
    if req.reasoning:
        raise OpenAIError(
            400, "reasoning is not supported by the served models", code="unsupported_value", param="reasoning"
        )
    return req


def _content(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(
            400, f"{param} must be a string or a list of content parts", code="invalid_value", param=param
        )
    parts: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in TEXT_PARTS and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise OpenAIError(
                400, f"content part of type {kind!r} is not supported", code="unsupported_value", param=f"{param}[{i}]"
            )
    return parts


def input_messages(items: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`input` as chat messages: consecutive function calls become one assistant turn's `tool_calls`."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input[{i}]"
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in {"user", "assistant", "system", "developer"}:
                raise OpenAIError(
                    400,
                    f"{param}.role must be user, assistant, system or developer",
                    code="invalid_value",
                    param=f"{param}.role",
                )
            messages.append(
                {
                    "role": "system" if role == "developer" else role,
                    "content": _content(item.get("content"), f"{param}.content"),
                }
            )
        elif kind == "function_call":
            call_id, name, arguments = item.get("call_id"), item.get("name"), item.get("arguments")
            if not (isinstance(call_id, str) and isinstance(name, str) and isinstance(arguments, str)):
                raise OpenAIError(
                    400, f"{param} needs string call_id, name and arguments", code="invalid_value", param=param
                )
            call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            call_id, output = item.get("call_id"), item.get("output")
            if not isinstance(call_id, str) or output is None:
                raise OpenAIError(400, f"{param} needs call_id and output", code="invalid_value", param=param)
            text = output if isinstance(output, str) else _flatten(_content(output, f"{param}.output"))
            messages.append({"role": "tool", "tool_call_id": call_id, "content": text})
        else:
            raise OpenAIError(
                400, f"input item of type {kind!r} is not supported", code="unsupported_value", param=f"{param}.type"
            )
    return messages


def _flatten(content: str | list[dict[str, Any]]) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def chat_body(req: ResponsesRequest, history: list[dict[str, Any]], new: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat request this response is answered by: instructions, the stored turns, the new input."""
    messages = ([{"role": "system", "content": req.instructions}] if req.instructions else []) + history + new
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}
    for ours, theirs in (
        ("max_output_tokens", "max_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("user", "user"),
    ):
        value = getattr(req, ours)
        if value is not None:
            body[theirs] = value
    if req.top_logprobs:
        body["logprobs"], body["top_logprobs"] = True, req.top_logprobs
    if req.tools:
        body["tools"] = [
            {"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)} for t in req.tools
        ]
    if isinstance(req.tool_choice, NamedFunction):
        body["tool_choice"] = {"type": "function", "function": {"name": req.tool_choice.name}}
    elif req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice
    fmt = req.text.format if req.text else None
    if fmt is not None and fmt.type == "json_object":
        body["response_format"] = {"type": "json_object"}
    elif fmt is not None and fmt.type == "json_schema":
        if fmt.schema_ is None:
            raise OpenAIError(
                400,
                "text.format.schema is required for json_schema",
                code="missing_required_parameter",
                param="text.format.schema",
            )
        schema = {"name": fmt.name or "response", "schema": fmt.schema_}
        if fmt.strict is not None:
            schema["strict"] = fmt.strict
        body["response_format"] = {"type": "json_schema", "json_schema": schema}
    for ext in ("rag", "prompt", "cache"):
        value = getattr(req, ext)
        if value is not None:
            body[ext] = value
    return body
