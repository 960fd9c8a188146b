"""A chat answer as a Responses API object, and a chat stream as Responses API events.

The object carries what OpenAI's does (`output` items: an assistant `message` with `output_text`
parts, then `function_call` items; `status` `incomplete` with `incomplete_details` when the token
limit cut it; `usage` as input/output tokens, with llm-serve's `cost_usd`), so the openai SDK's
`Response` (and `response.output_text`) reads it. The stream follows OpenAI's event order: created,
in_progress, output item added, content part added, text deltas, the closing events, completed,
each with a `sequence_number`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from llm_serve.router.apis.chat_stream import ChatAccumulator, ToolCallState
from llm_serve.router.apis.responses_request import ResponsesRequest


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_of(chat_usage: dict[str, Any] | None) -> dict[str, Any] | None:
    if not chat_usage:
        return None
    cached = (chat_usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
    usage = {
        "input_tokens": int(chat_usage.get("prompt_tokens") or 0),
        "input_tokens_details": {"cached_tokens": int(cached)},
        "output_tokens": int(chat_usage.get("completion_tokens") or 0),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(chat_usage.get("total_tokens") or 0),
    }
    if "cost_usd" in chat_usage:
        usage["cost_usd"] = chat_usage["cost_usd"]
    return usage


def skeleton(req: ResponsesRequest, response_id: str, created: int) -> dict[str, Any]:
    """The response object before any output: what `response.created` carries and the final one extends."""
    fmt = req.text.format.model_dump(by_alias=True, exclude_none=True) if req.text and req.text.format else None
    return {
        "id": response_id,
        "object": "response",
        "created_at": created,
        "status": "in_progress",
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "model": req.model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": None,
        "store": req.store,
        "temperature": req.temperature if req.temperature is not None else 1.0,
        "text": {"format": fmt or {"type": "text"}},
        "tool_choice": req.tool_choice.model_dump()
        if hasattr(req.tool_choice, "model_dump")
        else (req.tool_choice or "auto"),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "truncation": req.truncation or "disabled",
        "usage": None,
        "user": req.user,
        "metadata": req.metadata or {},
    }


def message_item(item_id: str, text: str, status: str = "completed") -> dict[str, Any]:
    return {
        "type": "message",
        "id": item_id,
        "status": status,
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}] if status == "completed" else [],
    }


def call_item(item_id: str, call: ToolCallState | dict[str, Any], status: str = "completed") -> dict[str, Any]:
    if isinstance(call, dict):
        fn = call.get("function") or {}
        call_id, name, arguments = call.get("id") or new_id("call"), fn.get("name", ""), fn.get("arguments") or ""
    else:
        call_id, name, arguments = call.id or new_id("call"), call.name, call.arguments
    return {
        "type": "function_call",
        "id": item_id,
        "call_id": call_id,
        "name": name,
        "arguments": arguments if status == "completed" else "",
        "status": status,
    }


def finish(
    response: dict[str, Any], finish_reason: str | None, usage: dict[str, Any] | None, extra: dict[str, Any] | None
) -> dict[str, Any]:
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    if reason:  # content_filter: a guardrail ended the answer (router/guardrails.py)
        response["incomplete_details"] = {"reason": reason}
    response["usage"] = usage_of(usage)
    if extra:
        response.update(extra)
    return response


def from_chat(req: ResponsesRequest, chat: dict[str, Any], response_id: str) -> dict[str, Any]:
    response = skeleton(req, response_id, int(chat.get("created") or time.time()))
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    if message.get("content"):
        response["output"].append(message_item(new_id("msg"), message["content"]))
    for call in message.get("tool_calls") or []:
        response["output"].append(call_item(new_id("fc"), call))
    extra = {k: chat[k] for k in ("sources", "rag") if k in chat}
    return finish(response, choice.get("finish_reason"), chat.get("usage"), extra)


def output_messages(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The response's output as chat messages: what the next turn's `previous_response_id` brings back."""
    text = "".join(
        part.get("text", "") for item in response["output"] if item["type"] == "message" for part in item["content"]
    )
    calls = [
        {"id": item["call_id"], "type": "function", "function": {"name": item["name"], "arguments": item["arguments"]}}
        for item in response["output"]
        if item["type"] == "function_call"
    ]
    if not text and not calls:
        return []
    message: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        message["tool_calls"] = calls
    return [message]


class ResponsesStream:
    """Responses API events, as SSE text, from a relayed chat stream's chunks."""

    def __init__(
        self, req: ResponsesRequest, response_id: str, on_done: Callable[[dict[str, Any]], Awaitable[None]]
    ) -> None:
        self.response = skeleton(req, response_id, int(time.time()))
        self.on_done = on_done  # stores a completed response
        self.seq = 0
        self.acc = ChatAccumulator()
        self._message: dict[str, Any] | None = None  # the open message item
        self._calls: dict[int, tuple[int, dict[str, Any]]] = {}  # tool index -> (output index, item)

    def _event(self, kind: str, **fields: Any) -> str:
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        return f"event: {kind}\ndata: {json.dumps(payload)}\n\n"

    async def events(self, chunks: AsyncIterator[dict[str, Any]]) -> AsyncIterator[str]:
        yield self._event("response.created", response=dict(self.response))
        yield self._event("response.in_progress", response=dict(self.response))
        async for payload in chunks:
            delta = self.acc.add(payload)
            if self.acc.error is not None:
                yield self._failed()
                return
            if delta.text:
                for text in self._text(delta.text):
                    yield text
            if delta.new_tool is not None:
                yield self._open_call(delta.new_tool)
            for state, piece in delta.tool_arguments:
                index, item = self._calls[state.index]
                yield self._event(
                    "response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=piece
                )
        for text in self._close():
            yield text
        finish(self.response, self.acc.finish_reason, self.acc.usage, self.acc.extra)
        await self.on_done(self.response)
        kind = "response.incomplete" if self.response["status"] == "incomplete" else "response.completed"
        yield self._event(kind, response=self.response)

    def _text(self, piece: str) -> list[str]:
        out = []
        if self._message is None:
            self._message = message_item(new_id("msg"), "", status="in_progress")
            self.response["output"].append(self._message)
            index = len(self.response["output"]) - 1
            out.append(self._event("response.output_item.added", output_index=index, item=dict(self._message)))
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=self._message["id"],
                    output_index=index,
                    content_index=0,
                    part={"type": "output_text", "text": "", "annotations": []},
                )
            )
        index = self.response["output"].index(self._message)
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self._message["id"],
                output_index=index,
                content_index=0,
                delta=piece,
            )
        )
        return out

    def _open_call(self, state: ToolCallState) -> str:
        item = call_item(new_id("fc"), state, status="in_progress")
        self.response["output"].append(item)
        index = len(self.response["output"]) - 1
        self._calls[state.index] = (index, item)
        return self._event("response.output_item.added", output_index=index, item=dict(item))

    def _close(self) -> list[str]:
        out = []
        if self._message is not None:
            index = self.response["output"].index(self._message)
            text = self.acc.text
            part = {"type": "output_text", "text": text, "annotations": []}
            out.append(
                self._event(
                    "response.output_text.done",
                    item_id=self._message["id"],
                    output_index=index,
                    content_index=0,
                    text=text,
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    item_id=self._message["id"],
                    output_index=index,
                    content_index=0,
                    part=part,
                )
            )
            self._message.update(status="completed", content=[part])
            out.append(self._event("response.output_item.done", output_index=index, item=self._message))
        for tool_index, (index, item) in sorted(self._calls.items()):
            state = self.acc.tools[tool_index]
            item.update(
                call_id=state.id or item["call_id"], name=state.name, arguments=state.arguments, status="completed"
            )
            out.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=index,
                    arguments=state.arguments,
                )
            )
            out.append(self._event("response.output_item.done", output_index=index, item=item))
        return out

    def _failed(self) -> str:
        err = self.acc.error or {}
        self.response["status"] = "failed"
        self.response["error"] = {"code": err.get("code") or "server_error", "message": err.get("message", "")}
        return self._event(
            "error", code=err.get("code"), message=err.get("message", ""), param=err.get("param")
        ) + self._event("response.failed", response=self.response)
