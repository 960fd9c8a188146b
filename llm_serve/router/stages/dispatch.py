"""Dispatch: send the request to its pool, falling back to the next candidate when a pool fails.

A pool that fails before its first output (an error, an engine error of 5xx, an empty stream) hands
the request to the next candidate; a timeout does not, since the request's time is spent. Identical
deterministic requests in flight at once share one engine call (coalesce.py). The stage ends with
the engine's first result in hand: the respond stage turns it into the client's answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from llm_serve.config import Config
from llm_serve.engine import ray_llm
from llm_serve.router.cache_keys import CacheContext, exact_key
from llm_serve.router.coalesce import Coalescer
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, from_engine_error
from llm_serve.router.observe import Observer
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.router")


class Dispatch:
    def __init__(self, config: Config, engines: dict[str, Any], coalescer: Coalescer, observer: Observer) -> None:
        self.config = config
        self.engines = engines
        self.stream_engines = {mid: h.options(stream=True) for mid, h in engines.items()}
        self.coalescer = coalescer
        self.observer = observer

    async def __call__(self, ctx: RequestContext) -> None:
        timeout = self.config.server.request_timeout_s
        for attempt, model_id in enumerate(ctx.candidates):
            last = attempt == len(ctx.candidates) - 1
            if model_id != ctx.row.model:
                self._fall_back(ctx, model_id)
            results = self._start(ctx, model_id)
            self.observer.waiting(+1)
            try:
                first = await asyncio.wait_for(results.__anext__(), timeout)
            except OpenAIError:
                raise
            except StopAsyncIteration:
                if last:
                    raise OpenAIError(502, "the engine returned no response", code="engine_error") from None
                continue
            except TimeoutError:
                # The request's time is spent: no time is left to give a fallback.
                abandon(results)
                raise call_failed(ctx, TimeoutError(), f"the engine for '{model_id}'") from None
            except Exception as exc:
                abandon(results)
                if last:
                    raise call_failed(ctx, exc, f"the engine for '{model_id}'") from None
                continue
            finally:
                self.observer.waiting(-1)
            head = first[0] if isinstance(first, list) and first else first
            if is_error_response(head):
                abandon(results)
                err = from_engine_error(head)
                if err.status >= 500 and not last:
                    continue
                raise err
            ctx.first, ctx.results = first, results
            break
        if ctx.body.stream:
            self.observer.first_output(ctx)

    def _start(self, ctx: RequestContext, model_id: str) -> Any:
        """The engine call for this attempt: a new one, or a seat on an identical one in flight."""
        handle = self.stream_engines[model_id]
        if ctx.row.adapter is not None:
            # Serve's model multiplexing sends the request to a replica holding the adapter, if any.
            handle = self.engines[model_id].options(stream=True, multiplexed_model_id=f"{model_id}:{ctx.row.adapter}")
        method = getattr(handle, ctx.route)
        body, info, lookup = ctx.body, engine_request_info(ctx), ctx.lookup
        if lookup is None or not (self.config.cache.coalesce and lookup.deterministic and not lookup.bypass):
            return method.remote(body, info)
        key = (lookup.exact_key or exact_key(body, lookup.ctx)) + (":stream" if body.stream else ":json")
        results, joined = self.coalescer.join(key, lambda: method.remote(body, info))
        if joined:
            ctx.row.cache = "coalesced"
        return results

    def _fall_back(self, ctx: RequestContext, model_id: str) -> None:
        """Point the request at the next pool; its cache coordinates follow, so no answer lands in the
        first pool's entries."""
        logger.warning("request %s: falling back from %s to %s", ctx.row.request_id, ctx.row.model, model_id)
        ctx.row.model = model_id
        if ctx.row.cache == "coalesced":  # this attempt is its own engine call
            ctx.row.cache = "miss"
        ctx.body.model = model_id
        lookup = ctx.lookup
        if lookup is not None:
            lookup.ctx = CacheContext(**{**lookup.ctx.__dict__, "model": model_id})
            lookup.exact_key = exact_key(ctx.body, lookup.ctx) if self.config.cache.exact.enabled else None
            lookup.scope = lookup.question = lookup.vector = None


def abandon(results: Any) -> None:
    """Stop an engine call nobody will read (frees the engine's slot instead of generating for no one)."""
    cancel = getattr(results, "cancel", None)
    if callable(cancel):
        cancel()
        return
    close = getattr(results, "aclose", None)
    if callable(close):
        asyncio.get_running_loop().create_task(close())


def call_failed(ctx: RequestContext, exc: Exception, what: str) -> OpenAIError:
    """The client's answer when a call to a deployment times out (504) or fails (503); recorded and logged."""
    if isinstance(exc, TimeoutError):
        ctx.finish(504, "timeout", "timeout")
        return OpenAIError(504, f"no response from {what} in time", code="timeout")
    ctx.finish(503, type(exc).__name__, "engine_unavailable")
    logger.error("call to %s failed for %s: %s: %s", what, ctx.row.request_id, type(exc).__name__, exc)
    return OpenAIError(503, f"{what} is unavailable ({type(exc).__name__})", code="engine_unavailable")


def is_error_response(obj: Any) -> bool:
    """vLLM's and Ray Serve LLM's ErrorResponse classes differ; both carry `.error.message`."""
    return not isinstance(obj, str) and hasattr(getattr(obj, "error", None), "message")


def engine_request_info(ctx: RequestContext) -> Any:
    """What travels with an engine call besides the request: the trace context, as LLMServer's
    RawRequestInfo headers (None when there is nothing to carry)."""
    if ctx.span is None or not ctx.span.is_recording():
        return None
    headers = tracing.carrier(ctx.span)
    if not headers:
        return None
    return ray_llm.RawRequestInfo(headers=headers)
