"""A chat answer as an Anthropic message, a chat stream as Anthropic's events, errors in its shape.

The message carries `content` blocks (`text`, then `tool_use` with the arguments parsed to an
object), `stop_reason` (`end_turn`, `max_tokens`, `stop_sequence` with the matched string, which
vLLM reports as `stop_reason`, or `tool_use`) and `usage` (input and output tokens, llm-serve's
`cost_usd`). The stream is Anthropic's event sequence (message_start, content_block_start/delta/
stop per block, message_delta with the stop reason and usage, message_stop), each as a named SSE
event, so the anthropic SDK's `messages.stream()` accumulates the same message.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse

from llm_serve.router.apis.chat_stream import ChatAccumulator, ToolCallState
from llm_serve.router.errors import OpenAIError

# Anthropic's error types by HTTP status (https://docs.anthropic.com/en/api/errors).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_body(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}


def error_response(exc: OpenAIError) -> JSONResponse:
    """An OpenAIError answered in Anthropic's shape; 422s become Anthropic's 400 invalid_request_error."""
    status = 400 if exc.status == 422 else exc.status
    message = f"{exc.param}: {exc.message}" if exc.param and exc.param not in exc.message else exc.message
    return JSONResponse(error_body(status, message), status_code=status, headers=exc.headers)


def stop_reason(finish_reason: str | None, matched: Any, stop_sequences: list[str] | None) -> tuple[str, str | None]:
    if finish_reason == "length":
        return "max_tokens", None
    if finish_reason == "tool_calls":
        return "tool_use", None
    if finish_reason == "content_filter":  # a guardrail ended the answer (router/guardrails.py)
        return "refusal", None
    if isinstance(matched, str) and stop_sequences and matched in stop_sequences:
        return "stop_sequence", matched
    return "end_turn", None


def _input(arguments: str) -> Any:
    try:
        value = json.loads(arguments) if arguments else {}
    except ValueError:
        return {"_raw_arguments": arguments}  # a small model's broken JSON is shown, not lost
    return value if isinstance(value, dict) else {"value": value}


def usage_of(chat_usage: dict[str, Any] | None) -> dict[str, Any]:
    chat_usage = chat_usage or {}
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    usage = {
        "input_tokens": int(chat_usage.get("prompt_tokens") or 0),
        "output_tokens": int(chat_usage.get("completion_tokens") or 0),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": int(cached),
    }
    if "cost_usd" in chat_usage:
        usage["cost_usd"] = chat_usage["cost_usd"]
    return usage


def new_id(prefix: str = "msg") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def from_chat(model: str, chat: dict[str, Any], stop_sequences: list[str] | None) -> dict[str, Any]:
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    content: list[dict[str, Any]] = []
    if message.get("content"):
        content.append({"type": "text", "text": message["content"]})
    for call in message.get("tool_calls") or []:
        fn = call.get("function") or {}
        content.append(
            {
                "type": "tool_use",
                "id": call.get("id") or new_id("toolu"),
                "name": fn.get("name", ""),
                "input": _input(fn.get("arguments") or ""),
            }
        )
    reason, sequence = stop_reason(choice.get("finish_reason"), choice.get("stop_reason"), stop_sequences)
    out = {
        "id": new_id(),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": usage_of(chat.get("usage")),
    }
    out.update({k: chat[k] for k in ("sources", "rag") if k in chat})
    return out


def _event(kind: str, payload: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **payload})}\n\n"


class MessagesStream:
    """Anthropic stream events, as SSE text, from a relayed chat stream's chunks."""

    def __init__(self, model: str, stop_sequences: list[str] | None) -> None:
        self.model = model
        self.stop_sequences = stop_sequences
        self.acc = ChatAccumulator()
        self.started = False
        self.block = -1  # index of the open content block
        self.block_kind: str | None = None
        self.tool_blocks: dict[int, int] = {}  # tool index -> content block index

    def _start(self) -> str:
        self.started = True
        usage = usage_of(self.acc.usage)
        usage["output_tokens"] = min(usage["output_tokens"], 1)
        message = {
            "id": new_id(),
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": usage,
        }
        return _event("message_start", {"message": message}) + _event("ping", {})

    def _close_block(self) -> str:
        if self.block_kind is None:
            return ""
        self.block_kind = None
        return _event("content_block_stop", {"index": self.block})

    def _open(self, block: dict[str, Any]) -> str:
        out = self._close_block()
        self.block += 1
        self.block_kind = block["type"]
        return out + _event("content_block_start", {"index": self.block, "content_block": block})

    async def events(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
        async for payload in chunks:
            delta = self.acc.add(payload)
            out = "" if self.started or self.acc.error else self._start()
            if self.acc.error is not None:
                err = self.acc.error
                code = str(err.get("code", ""))
                status = int(code) if code.isdigit() else 500
                yield out + _event("error", {"error": error_body(status, str(err.get("message", "")))["error"]})
                return
            if delta.text:
                if self.block_kind != "text":
                    out += self._open({"type": "text", "text": ""})
                out += _event(
                    "content_block_delta", {"index": self.block, "delta": {"type": "text_delta", "text": delta.text}}
                )
            if delta.new_tool is not None:
                out += self._open_tool(delta.new_tool)
            for state, piece in delta.tool_arguments:
                index = self.tool_blocks.get(state.index, self.block)
                out += _event(
                    "content_block_delta",
                    {"index": index, "delta": {"type": "input_json_delta", "partial_json": piece}},
                )
            if out:
                yield out
        out = ("" if self.started else self._start()) + self._close_block()
        reason, sequence = stop_reason(self.acc.finish_reason, self.acc.stop_reason, self.stop_sequences)
        usage = usage_of(self.acc.usage)
        delta_payload: dict[str, Any] = {"delta": {"stop_reason": reason, "stop_sequence": sequence}, "usage": usage}
        delta_payload.update(self.acc.extra)
        yield out + _event("message_delta", delta_payload) + _event("message_stop", {})

    def _open_tool(self, state: ToolCallState) -> str:
        out = self._open({"type": "tool_use", "id": state.id or new_id("toolu"), "name": state.name, "input": {}})
        self.tool_blocks[state.index] = self.block
        return out
