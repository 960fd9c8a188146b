"""Finished answers in both shapes: a stream assembled into one response, and one response replayed
as a stream.

The caches store one canonical form (the non-streamed response JSON), so an answer first produced
for a streaming client serves a JSON client later and the other way round. A stream that cannot be
rebuilt exactly (logprobs in it) is not stored rather than stored wrong.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from llm_serve.sse import DONE_EVENT, sse

SSE_HEADERS = {"cache-control": "no-cache"}


def assemble(events: list[str], route: str) -> dict[str, Any] | None:
    """The non-streamed response equivalent to these SSE events, or None if it cannot be exact."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage = None
    for event in events:
        if not event.startswith("data: ") or event.startswith(DONE_EVENT[:12]):
            continue
        try:
            chunk = json.loads(event[len("data: ") :])
        except ValueError:
            return None
        if "error" in chunk:
            return None
        if not head:
            head = {k: chunk.get(k) for k in ("id", "created", "model", "system_fingerprint")}
        if chunk.get("usage"):
            usage = chunk["usage"]
        for part in chunk.get("choices") or []:
            if part.get("logprobs") is not None:
                return None
            index = part.get("index", 0)
            if route == "chat":
                choice = choices.setdefault(
                    index,
                    {"index": index, "message": {"role": "assistant", "content": ""}, "finish_reason": None},
                )
                _merge_delta(choice["message"], part.get("delta") or {})
            else:
                choice = choices.setdefault(index, {"index": index, "text": "", "finish_reason": None})
                choice["text"] += part.get("text") or ""
            if part.get("finish_reason") is not None:
                choice["finish_reason"] = part["finish_reason"]
                if part.get("stop_reason") is not None:
                    choice["stop_reason"] = part["stop_reason"]
    if not choices or any(c["finish_reason"] is None for c in choices.values()):
        return None  # cut short: not a whole answer
    return {
        **head,
        "object": "chat.completion" if route == "chat" else "text_completion",
        "choices": [{**choices[i], "logprobs": None} for i in sorted(choices)],
        "usage": usage,
    }


def _merge_delta(message: dict[str, Any], delta: dict[str, Any]) -> None:
    for key, value in delta.items():
        if value is None or key == "role":
            continue
        if key == "tool_calls":
            calls = message.setdefault("tool_calls", [])
            for call in value:
                i = call.get("index", len(calls))
                while len(calls) <= i:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                target = calls[i]
                target["id"] = call.get("id") or target["id"]
                target["type"] = call.get("type") or target["type"]
                fn = call.get("function") or {}
                target["function"]["name"] += fn.get("name") or ""
                target["function"]["arguments"] += fn.get("arguments") or ""
        elif isinstance(value, str):
            message[key] = (message.get(key) or "") + value
        else:
            message[key] = value


def stream_events(payload: dict[str, Any], include_usage: bool, extra: dict[str, Any] | None) -> list[str]:
    """SSE events that a client assembles back into `payload` (its id, model and content)."""
    chat = payload.get("object") == "chat.completion"
    head = {
        "id": payload.get("id") or f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk" if chat else "text_completion",
        "created": payload.get("created") or int(time.time()),
        "model": payload.get("model", ""),
    }

    def event(obj: dict[str, Any]) -> str:
        return sse({**head, **obj})

    out = []
    for choice in payload.get("choices", []):
        index = choice.get("index", 0)
        done = {"finish_reason": choice.get("finish_reason") or "stop"}
        if not chat:
            out.append(event({"choices": [{"index": index, "text": choice.get("text", ""), "finish_reason": None}]}))
            out.append(event({"choices": [{"index": index, "text": "", **done}]}))
            continue
        message = dict(choice.get("message") or {})
        role = message.pop("role", "assistant")
        out.append(
            event({"choices": [{"index": index, "delta": {"role": role, "content": ""}, "finish_reason": None}]})
        )
        delta = {k: v for k, v in message.items() if v not in (None, "", [])}
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": i, **call} for i, call in enumerate(delta["tool_calls"])]
        if delta:
            out.append(event({"choices": [{"index": index, "delta": delta, "finish_reason": None}]}))
        out.append(event({"choices": [{"index": index, "delta": {}, **done}]}))
    if include_usage and payload.get("usage") is not None:
        out.append(event({"choices": [], "usage": payload["usage"]}))
    if extra:
        out.append(event({"choices": [], **extra}))
    out.append(DONE_EVENT)
    return out


def replay(
    payload: dict[str, Any],
    *,
    stream: bool,
    include_usage: bool,
    headers: dict[str, str],
    extra: dict[str, Any] | None = None,
) -> JSONResponse | StreamingResponse:
    """A finished answer sent the way the client asked for it: one JSON body, or a proper SSE stream."""
    if not stream:
        return JSONResponse({**payload, **(extra or {})}, headers=headers)
    events = stream_events(payload, include_usage, extra)

    async def body() -> AsyncIterator[str]:
        for item in events:
            yield item

    return StreamingResponse(body(), media_type="text/event-stream", headers={**headers, **SSE_HEADERS})


def refusal_payload(model_id: str, message: str) -> dict[str, Any]:
    """A chat answer made by the router itself (no engine call)."""
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": message},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
    }
