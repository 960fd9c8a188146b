"""Reading a relayed chat-completion stream back into its parts, for the API adapters' own events.

The relay yields text holding one or more `data: {...}` events (Ray Serve LLM batches them). The
adapters need each chunk as JSON, and the answer as it grows: text, tool calls by index (their
arguments arrive in pieces), the finish reason, vLLM's `stop_reason` (which stop string matched) and
the usage (with its cost, which the relay adds to the usage chunk).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from llm_serve.sse import DATA_PREFIX, event_payload


def chunks(text: str) -> Iterator[dict[str, Any]]:
    """The JSON payloads of the `data:` events in `text` (the `[DONE]` mark and comments skipped)."""
    for event in text.split("\n\n"):
        event = event.strip()
        if event.startswith(DATA_PREFIX) and (payload := event_payload(event)):
            yield payload


async def chunk_stream(body: AsyncIterator[Any]) -> AsyncIterator[dict[str, Any]]:
    """Every chunk payload of a relayed stream, closing the relay however the caller stops."""
    try:
        async for text in body:
            for payload in chunks(text.decode() if isinstance(text, bytes) else text):
                yield payload
    finally:
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()


@dataclass
class ToolCallState:
    index: int
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChoiceDelta:
    """What one chunk added to choice 0, as the adapters' events need it."""

    text: str = ""
    new_tool: ToolCallState | None = None  # a call that starts in this chunk
    tool_arguments: list[tuple[ToolCallState, str]] = field(default_factory=list)


@dataclass
class ChatAccumulator:
    """The answer of choice 0 so far; `add` returns what each chunk changed."""

    text: str = ""
    tools: dict[int, ToolCallState] = field(default_factory=dict)
    finish_reason: str | None = None
    stop_reason: Any = None
    usage: dict[str, Any] | None = None
    response_id: str | None = None
    error: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # llm-serve's additions (RAG `sources`, `rag`)

    def add(self, payload: dict[str, Any]) -> ChoiceDelta:
        delta_out = ChoiceDelta()
        if "error" in payload:
            err = payload["error"]
            self.error = err if isinstance(err, dict) else {"message": str(err)}
            return delta_out
        self.response_id = self.response_id or payload.get("id")
        if isinstance(payload.get("usage"), dict):
            self.usage = payload["usage"]
        for key in ("sources", "rag"):
            if key in payload:
                self.extra[key] = payload[key]
        for choice in payload.get("choices") or []:
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                delta_out.text = str(delta["content"])
                self.text += delta_out.text
            for call in delta.get("tool_calls") or []:
                index = int(call.get("index", 0))
                state = self.tools.get(index)
                if state is None:
                    state = self.tools[index] = ToolCallState(index)
                    delta_out.new_tool = state
                state.id = state.id or str(call.get("id") or "")
                fn = call.get("function") or {}
                state.name = state.name or str(fn.get("name") or "")
                if fn.get("arguments"):
                    state.arguments += str(fn["arguments"])
                    delta_out.tool_arguments.append((state, str(fn["arguments"])))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
                self.stop_reason = choice.get("stop_reason")
        return delta_out
