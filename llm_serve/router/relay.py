"""Relay of the engine's server-sent events to the client.

LLMServer yields batches (lists) of ready-made `data: {...}\n\n` strings. The relay passes them on
untouched except for what the router needs: it reads the usage the engine puts on every chunk (the
router asks for `continuous_usage_stats`), so every streamed request is priced to the token even
when it is cut short, and strips it again unless the client asked for it; it keeps the final usage
chunk only when the client asked for `include_usage`; and it guarantees the stream ends with
`data: [DONE]`. Only events that can carry usage or an error are parsed. The upstream `[DONE]` is
always held back and sent last, after anything the router adds (RAG sources), so it appears exactly
once and at the end.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

from llm_serve.router.errors import OpenAIError, from_engine_error
from llm_serve.sse import (
    DATA_PREFIX,
    DONE_EVENT,
    ERROR_MARK,
    ERROR_PREFIX_LEN,
    FINISH_MARK,
    USAGE_MARK,
    finish_reasons,
    sse,
)


class StreamRelay:
    """Async iterator of SSE text for the client, built from the engine's first item and the rest."""

    def __init__(
        self,
        first: Any,
        rest: AsyncIterator[Any],
        *,
        keep_usage_chunk: bool,
        deadline_s: float,
        keep_running_usage: bool = False,
        final_extra: dict[str, Any] | None = None,
        on_usage: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        collect: bool = False,
        track_finish: bool = False,
        guard: Any = None,
    ) -> None:
        self._first = first
        self._rest = rest
        self._keep_usage_chunk = keep_usage_chunk
        self._keep_running_usage = keep_running_usage  # the client asked for usage on every chunk too
        self._deadline = time.monotonic() + deadline_s
        self.usage: dict[str, Any] | None = None
        self.error: str | None = None
        self.timed_out = False
        # The engine finished the answer (a finish reason, or its own [DONE]): the stream was not cut short
        # upstream. Ray Serve LLM's stream does not always end with [DONE], so both count.
        self.engine_done = False
        self.content_events = 0  # events relayed: the output-token estimate when no usage arrives
        self.finish_reasons: list[str] = []  # for the trace (gen_ai.response.finish_reasons)
        self._track_finish = track_finish  # a regex per event: only when a trace will show the reasons
        # Fields (e.g. RAG `sources`) sent in one last chunk before [DONE], shaped like the usage chunk.
        self._final_extra = final_extra
        self._chunk_head: dict[str, Any] = {}
        # Called with the engine's usage; what it returns (the cost) is added to the usage chunk.
        self._on_usage = on_usage
        # Every engine event kept, so the finished stream can be assembled for the cache.
        self.events: list[str] | None = [] if collect else None
        # Output guardrails (router/guardrails.py StreamGuard): may rewrite content events, or end the
        # stream with a refusal; `blocked` then says so and the engine call is to be cancelled.
        self._guard = guard

    @property
    def blocked(self) -> bool:
        return self._guard is not None and self._guard.blocked is not None

    @property
    def block(self) -> Any:
        """The guardrail finding that ended the stream (None when none did)."""
        return self._guard.blocked if self._guard is not None else None

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        text = self._render(self._first)
        if text:
            yield text
        rest = self._rest.__aiter__()
        while not self.blocked:
            # The deadline wraps each wait for the engine, never a yield: time spent sending to a
            # slow client must not be cancelled from inside the generator.
            try:
                item = await asyncio.wait_for(rest.__anext__(), self._remaining())
            except StopAsyncIteration:
                break
            except TimeoutError:
                self.error = "timeout"
                self.timed_out = True
                yield sse(OpenAIError(504, "stream exceeded the request timeout", code="timeout").body())
                break
            text = self._render(item)
            if text:
                yield text
        if self.blocked and self._keep_usage_chunk and self.usage is not None:
            yield self._usage_event()
        if self._final_extra:
            yield self._extra_event()
        yield DONE_EVENT

    def _extra_event(self) -> str:
        head = self._chunk_head or {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": "",
        }
        return sse({**head, "choices": [], **(self._final_extra or {})})

    def _usage_event(self) -> str:
        """The usage chunk of a stream the guardrails ended: what the engine had produced by then, priced."""
        usage = dict(self.usage or {})
        if self._on_usage is not None:
            usage.update(self._on_usage(usage))
        head = self._chunk_head or getattr(self._guard, "head", None) or {"object": "chat.completion.chunk"}
        return sse({**head, "choices": [], "usage": usage})

    def _remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def _render(self, item: Any) -> str:
        events = item if isinstance(item, list) else [item]
        out = []
        for event in events:
            if not isinstance(event, str):
                # An ErrorResponse object mid-stream: the same mapping as a non-streamed engine error.
                event = sse(from_engine_error(event).body())
            if self._guard is not None:
                # First, so the collected answer (cache fill, traces) is what the client got: redacted.
                event = self._guard.process(event)
                if not event:  # after a block: nothing more goes out
                    continue
            if self.events is not None:
                self.events.append(event)
            if (self._track_finish or not self.engine_done) and FINISH_MARK.search(event):
                self.engine_done = True
                if self._track_finish:
                    self._read_finish(event)
            if USAGE_MARK in event or ERROR_MARK in event[:ERROR_PREFIX_LEN]:
                event = self._inspect(event)
            elif event.startswith(DONE_EVENT[:12]):
                self.engine_done = True
                continue
            if event:
                out.append(event)
                self.content_events += 1
            if self.blocked:
                break
        return "".join(out)

    def _read_finish(self, event: str) -> None:
        self.finish_reasons.extend(finish_reasons(event))

    @property
    def response_id(self) -> str | None:
        return self._chunk_head.get("id")

    @property
    def upstream(self) -> AsyncIterator[Any]:
        return self._rest

    def _inspect(self, event: str) -> str:
        """Read usage or error from one event; return what should still be sent."""
        try:
            payload = json.loads(event[len(DATA_PREFIX) :])
        except ValueError:
            return event
        if "error" in payload:
            err = payload["error"]
            self.error = err.get("message") if isinstance(err, dict) else str(err)
            return event
        usage = payload.get("usage")
        if isinstance(usage, dict):
            self.usage = usage  # the engine's count so far: exact even when the stream is cut short
            if payload.get("choices"):  # a content chunk with the running usage (continuous_usage_stats)
                if self._keep_running_usage:
                    return event
                del payload["usage"]
                return sse(payload)
            self._chunk_head = {k: payload[k] for k in ("id", "object", "created", "model") if k in payload}
            if not self._keep_usage_chunk and not payload.get("choices"):
                return ""
            if self._on_usage is not None:
                usage.update(self._on_usage(usage))
                return sse(payload)
        return event
