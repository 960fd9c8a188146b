"""Respond: the engine's answer to the client, as one JSON body or as a relayed stream.

A JSON answer is priced, stored in the caches and sent. A stream is relayed event by event
(relay.py) and outlives the handler, so it settles itself: after the engine's last event and before
the final `[DONE]` it prices what was produced, writes the ledger row and fills the caches, and a
stream cut short (client gone, engine failure, timeout) is still priced, from the engine's usage or,
without it, from the events relayed. `SettledStreamingResponse` settles even a stream whose body
never started.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from llm_serve.config import Config
from llm_serve.router.coalesce import cancel_call
from llm_serve.router.context import CacheLookup, RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.guardrails import Guardrails
from llm_serve.router.observe import Observer
from llm_serve.router.relay import StreamRelay
from llm_serve.router.replay import assemble
from llm_serve.router.stages.cache import Cache
from llm_serve.router.stages.settle import SHARED_ANSWERS, Settler, held, price, price_usage
from llm_serve.sse import DONE_EVENT, sse
from llm_serve.telemetry import genai, tracing

logger = logging.getLogger("llm_serve.router")


class Respond:
    def __init__(
        self, config: Config, cache: Cache, observer: Observer, settle: Settler, guardrails: Guardrails | None = None
    ) -> None:
        self.config = config
        self.cache = cache
        self.observer = observer
        self.settle = settle
        self.guardrails = guardrails

    async def __call__(self, ctx: RequestContext) -> Response:
        if ctx.body.stream:
            return self._stream(ctx)
        return await self._json(ctx)

    async def _json(self, ctx: RequestContext) -> Response:
        first = ctx.first
        head = first[0] if isinstance(first, list) and first else first
        payload = head.model_dump(mode="json", exclude_none=False)
        price_usage(self.config, ctx, payload.get("usage"))
        if self.guardrails is not None:
            self.guardrails.output_payload(ctx, payload)  # a block raises its 400 after the tokens are priced
        self.observer.response(ctx, payload)
        if ctx.row.cache != "coalesced":
            await self.cache.fill(ctx.lookup, payload)
        if isinstance(payload.get("usage"), dict):
            payload["usage"]["cost_usd"] = ctx.row.cost_usd
        ctx.finish(200)
        if ctx.extra:
            payload.update(ctx.extra)
        return JSONResponse(payload, headers=ctx.cost_headers())

    def _stream(self, ctx: RequestContext) -> Response:
        lookup = ctx.lookup
        fill = lookup is not None and lookup.fills and ctx.row.cache != "coalesced"
        # The monitors and content capture need the answer's text; collecting is off otherwise.
        keep = fill or ctx.rag_contexts is not None or tracing.capture_content() or self.observer.sample_toxicity(ctx)
        relay = StreamRelay(
            ctx.first,
            ctx.results,
            keep_usage_chunk=ctx.include_usage,
            keep_running_usage=ctx.continuous_usage,
            deadline_s=self.config.server.request_timeout_s,
            final_extra=ctx.extra,
            on_usage=lambda usage: {"cost_usd": price_usage(self.config, ctx, usage)},
            collect=keep,
            track_finish=tracing.enabled(),
            guard=self.guardrails.stream_guard(ctx) if self.guardrails is not None else None,
        )

        async def settle_unstarted() -> None:
            """The request's settlement when its body never ran to the end (or never started at all)."""
            if ctx.settled:
                return
            cancel_call(relay.upstream)
            if not ctx.finished:
                ctx.finish(499, "client disconnected", "client_disconnected")
            self._price_stream(relay, ctx)
            await self.settle(ctx)

        return SettledStreamingResponse(
            self._relay(relay, ctx, lookup if fill else None),
            settle=settle_unstarted,
            media_type="text/event-stream",
            headers={**ctx.response_headers(), "cache-control": "no-cache"},
        )

    async def _relay(self, relay: StreamRelay, ctx: RequestContext, lookup: CacheLookup | None) -> AsyncIterator[str]:
        """Relay the engine's events; the request is settled before the final [DONE] goes out.

        Every settlement here is `held`: when the client leaves, Serve cancels this request and its
        engine call from another thread, so the engine's stream can end (or fail) before the
        cancellation reaches this generator, which is then cancelled while it settles. Unheld, that
        cancellation dropped the ledger row of a stream the client abandoned.
        """
        completed = False
        try:
            async for text in relay:
                if text == DONE_EVENT:
                    break
                yield text
            completed = True
        except Exception as exc:
            logger.exception("stream %s failed", ctx.row.request_id)
            ctx.finish(500, type(exc).__name__)
            err = OpenAIError(500, f"the stream failed ({type(exc).__name__})", code="engine_error")
            self._price_stream(relay, ctx)
            await held(self.settle(ctx))
            yield sse(err.body()) + DONE_EVENT
            return
        finally:
            if not completed and not ctx.settled:
                # The client went away (cancelled, or the generator closed mid-yield).
                cancel_call(relay.upstream)
                if not ctx.finished:
                    ctx.finish(499, "client disconnected")
                self._price_stream(relay, ctx)
                await held(self.settle(ctx))
        if relay.timed_out or relay.blocked:
            cancel_call(relay.upstream)
        if relay.blocked:
            # The guardrails ended it with a refusal: an answer (200), the tokens made so far billed, no cache fill.
            finding = relay.block
            ctx.finish(200, f"output blocked by the guardrail policy '{finding.policy}' ({finding.check})")
            self._price_stream(relay, ctx)
            await held(self.settle(ctx))
            yield DONE_EVENT
            return
        if not relay.error and not relay.engine_done:
            # The engine's stream stopped cleanly before any finish reason: Serve cancelled the engine
            # call because this request was cancelled (its client left). An engine that dies fails the
            # call instead. Settled as the client's leaving, whichever cancellation arrived first.
            ctx.finish(499, "client disconnected (the engine call was cancelled)", "client_disconnected")
            self._price_stream(relay, ctx)
            await held(self.settle(ctx))
            return
        status = (504 if relay.timed_out else 500) if relay.error else 200
        ctx.finish(status, relay.error, ("timeout" if relay.timed_out else "engine_error") if relay.error else None)
        self._price_stream(relay, ctx)
        assembled = assemble(relay.events, ctx.route) if relay.events is not None and not relay.error else None
        if ctx.span is not None:
            if relay.finish_reasons:
                ctx.span.set_attribute(genai.FINISH_REASONS, relay.finish_reasons)
            if relay.response_id:
                ctx.span.set_attribute(genai.RESPONSE_ID, relay.response_id)
            if assembled is not None:
                self.observer.response(ctx, assembled)
        await held(self.settle(ctx))
        if lookup is not None and assembled is not None:
            await self.cache.fill(lookup, assembled)
        yield DONE_EVENT

    def _price_stream(self, relay: StreamRelay, ctx: RequestContext) -> None:
        """Price a stream from the engine's usage; a stream cut off before its usage chunk is priced from
        the events relayed (output) and the prompt's estimated length."""
        if relay.usage:
            price_usage(self.config, ctx, relay.usage)
            return
        row = ctx.row
        row.prompt_tokens = row.prompt_tokens or ctx.estimated_prompt_tokens
        row.completion_tokens = relay.content_events
        row.error = f"{row.error}; tokens estimated" if row.error else "tokens estimated"
        row.cost_usd = price(self.config, ctx, hit=row.cache in SHARED_ANSWERS)


class SettledStreamingResponse(StreamingResponse):
    """A streamed response that always settles its request (ledger row, span, gauges).

    The relay generator settles for itself when it runs, but Starlette may never start it: the client
    can vanish, or the task be cancelled, between the response head and the first body chunk, and a
    generator that never started runs no `finally`. So the response closes its body iterator and
    calls `settle` after sending, however sending ended.
    """

    settles_itself = True  # the handler that returns it leaves settlement to it

    def __init__(self, content: Any, *, settle: Callable[[], Awaitable[None]], **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._settle = settle

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await held(self._close_and_settle())

    async def _close_and_settle(self) -> None:
        with contextlib.suppress(Exception):  # a generator still running elsewhere ends by itself
            await self.body_iterator.aclose()  # type: ignore[union-attr]
        await self._settle()
