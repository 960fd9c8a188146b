"""Relay of the engine's server-sent events to the client.

LLMServer yields batches (lists) of ready-made `data: {...}\n\n` strings. The relay passes them on
untouched except for two things the router needs: it reads the usage chunk (so every streamed
request is counted), dropping it again when the client did not ask for it, and it guarantees the
stream ends with `data: [DONE]`. Only events that can carry usage or an error are parsed, so the
per-token path stays a string join.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

DONE_EVENT = "data: [DONE]\n\n"
# Cheap substring tests decide which events are parsed at all; JSON spacing varies by producer.
USAGE_MARK = '"usage"'
ERROR_MARK = '"error"'
ERROR_PREFIX_LEN = 16


class StreamRelay:
    """Async iterator of SSE text for the client, built from the engine's first item and the rest."""

    def __init__(self, first: Any, rest: AsyncIterator[Any], *, keep_usage_chunk: bool, deadline_s: float) -> None:
        self._first = first
        self._rest = rest
        self._keep_usage_chunk = keep_usage_chunk
        self._deadline = time.monotonic() + deadline_s
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self._done_sent = False

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        text = self._render(self._first)
        if text:
            yield text
        try:
            async with asyncio.timeout_at(asyncio.get_running_loop().time() + self._remaining()):
                async for item in self._rest:
                    text = self._render(item)
                    if text:
                        yield text
        except TimeoutError:
            self.error = "timeout"
            yield (
                'data: {"error": {"message": "stream exceeded the request timeout", "type": '
                '"timeout_error", "param": null, "code": "timeout"}}\n\n'
            )
        if not self._done_sent:
            yield DONE_EVENT

    def _remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _render(self, item: Any) -> str:
        events = item if isinstance(item, list) else [item]
        out = []
        for event in events:
            if not isinstance(event, str):
                event = _error_event(event)
            if USAGE_MARK in event or ERROR_MARK in event[:ERROR_PREFIX_LEN]:
                event = self._inspect(event)
            elif event.startswith(DONE_EVENT[:12]):
                self._done_sent = True
            if event:
                out.append(event)
        return "".join(out)

    def _inspect(self, event: str) -> str:
        """Read usage or error from one event; return what should still be sent."""
        try:
            payload = json.loads(event[len("data: ") :])
        except ValueError:
            return event
        if "error" in payload:
            err = payload["error"]
            self.error = err.get("message") if isinstance(err, dict) else str(err)
            return event
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
            if not self._keep_usage_chunk and not payload.get("choices"):
                return ""
        return event


def _error_event(obj: Any) -> str:
    """An ErrorResponse object that arrived mid-stream, rendered as an SSE error event."""
    info = getattr(obj, "error", obj)
    body = {
        "error": {
            "message": str(getattr(info, "message", info)),
            "type": getattr(info, "type", "api_error"),
            "param": getattr(info, "param", None),
            "code": getattr(info, "code", None),
        }
    }
    return f"data: {json.dumps(body)}\n\n"
