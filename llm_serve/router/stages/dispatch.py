"""Dispatch: send the request to its pool, falling back to the next candidate when a pool fails.

A pool that fails before its first output (an error, an engine error of 5xx, an empty stream, an
upstream API's 429 or 5xx) hands the request to the next candidate; a timeout of the request does
not, since the request's time is spent. Engine pools and API pools (providers/pool.py) are called
alike, so a fallback may cross from one kind to the other. Identical
deterministic requests in flight at once share one engine call, and every non-streamed call is driven
by the router (coalesce.py), so that its usage is known even when the client has left. The stage
ends with the engine's first result in hand: the respond stage turns it into the client's answer.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray.serve.exceptions import BackPressureError

from llm_serve.config import Config
from llm_serve.engine import ray_llm
from llm_serve.router.cache_keys import CacheContext, exact_key
from llm_serve.router.coalesce import Coalescer, cancel_call
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError, from_engine_error
from llm_serve.router.observe import Observer
from llm_serve.router.pool_health import PoolBreaker, PoolDown
from llm_serve.router.providers.errors import UpstreamError
from llm_serve.telemetry import tracing

logger = logging.getLogger("llm_serve.router")

RETRY_SOON = {"retry-after": "1"}


class Dispatch:
    def __init__(self, config: Config, engines: dict[str, Any], coalescer: Coalescer, observer: Observer) -> None:
        self.config = config
        self.engines = engines
        routing = config.routing
        self.breakers = {
            mid: PoolBreaker(
                mid,
                handle,
                failures_to_open=routing.breaker_failures,
                probe_interval_s=routing.breaker_probe_interval_s,
                probe_timeout_s=routing.breaker_probe_timeout_s,
            )
            for mid, handle in engines.items()
        }
        self.stream_engines = {mid: h.options(stream=True) for mid, h in engines.items()}
        self.coalescer = coalescer
        self.observer = observer

    async def __call__(self, ctx: RequestContext) -> None:
        timeout = self.config.server.request_timeout_s
        for attempt, model_id in enumerate(ctx.candidates):
            last = attempt == len(ctx.candidates) - 1
            breaker = self.breakers[model_id]
            if breaker.is_down:  # a pool that cannot answer now: the next one, or a quick 503
                if last:
                    raise pool_down(ctx, PoolDown(model_id, breaker.retry_after_s()))
                continue
            if model_id != ctx.row.model:
                self._fall_back(ctx, model_id)
            results = self._start(ctx, model_id)
            self.observer.waiting(+1)
            try:
                first = await first_output(results, breaker, timeout)
            except asyncio.CancelledError:  # the client left: a flight is priced at settlement
                cancel_call(results)
                raise
            except OpenAIError:
                raise
            except StopAsyncIteration:
                if last:
                    raise OpenAIError(502, "the engine returned no response", code="engine_error") from None
                continue
            except TimeoutError:
                # The request's time is spent: no time is left to give a fallback.
                cancel_call(results)
                raise call_failed(ctx, TimeoutError(), f"the engine for '{model_id}'") from None
            except PoolDown as exc:  # the pool went down while this request waited for it
                cancel_call(results)
                if last:
                    raise pool_down(ctx, exc) from None
                continue
            except BackPressureError:  # the pool's queue is full: overloaded, not broken
                if last:
                    raise overloaded(ctx, model_id) from None
                continue
            except UpstreamError as exc:  # an API pool's upstream said no, or could not be reached
                if exc.counts and (ctx.flight is None or ctx.owns_flight):  # once per call, not per follower
                    breaker.failed(exc)
                if last or not exc.falls_back:
                    raise exc.client_error() from None
                continue
            except Exception as exc:
                cancel_call(results)
                breaker.failed(exc)
                if last:
                    raise call_failed(ctx, exc, f"the engine for '{model_id}'") from None
                continue
            finally:
                self.observer.waiting(-1)
            breaker.succeeded()
            head = first[0] if isinstance(first, list) and first else first
            if is_error_response(head):
                cancel_call(results)
                err = from_engine_error(head)
                if err.status >= 500 and not last:
                    continue
                raise err
            ctx.first, ctx.results = first, results
            break
        if ctx.body.stream:
            self.observer.first_output(ctx)

    def _start(self, ctx: RequestContext, model_id: str) -> Any:
        """The engine call for this attempt: a stream read directly, a flight of the router's own (every
        non-streamed call), or a seat on an identical call in flight."""
        handle = self.stream_engines[model_id]
        if ctx.row.adapter is not None:
            # Serve's model multiplexing sends the request to a replica holding the adapter, if any.
            handle = self.engines[model_id].options(stream=True, multiplexed_model_id=f"{model_id}:{ctx.row.adapter}")
        method = getattr(handle, ctx.route)
        body, info, lookup = ctx.body, engine_request_info(ctx), ctx.lookup
        stream = bool(body.stream)
        shared = lookup is not None and self.config.cache.coalesce and lookup.deterministic and not lookup.bypass
        if shared:
            key = (lookup.exact_key or exact_key(body, lookup.ctx)) + (":stream" if stream else ":json")
            flight, joined = self.coalescer.join(key, lambda: method.remote(body, info), stream=stream)
            if joined:
                ctx.row.cache = "coalesced"
        elif stream:
            ctx.flight = None
            return method.remote(body, info)
        else:
            flight, joined = self.coalescer.start(lambda: method.remote(body, info), stream=False), False
        ctx.flight, ctx.owns_flight = flight, not joined
        return flight.subscribe()

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


async def first_output(results: Any, breaker: PoolBreaker, timeout_s: float) -> Any:
    """The call's first result, or PoolDown as soon as the pool's breaker opens while we wait."""
    first = asyncio.ensure_future(results.__anext__())
    down = asyncio.ensure_future(breaker.wait_down())
    try:
        done, _ = await asyncio.wait({first, down}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        down.cancel()
        if not first.done():
            first.cancel()
    if first in done:
        return first.result()
    if down in done:
        raise PoolDown(breaker.model_id, breaker.retry_after_s())
    raise TimeoutError


def pool_down(ctx: RequestContext, exc: PoolDown) -> OpenAIError:
    ctx.finish(503, str(exc), "engine_unavailable")
    return OpenAIError(
        503,
        f"{exc}; try again in {exc.retry_after_s} s",
        code="engine_unavailable",
        headers={"retry-after": str(exc.retry_after_s)},
    )


def overloaded(ctx: RequestContext, model_id: str) -> OpenAIError:
    ctx.finish(503, "overloaded", "overloaded")
    return OpenAIError(
        503, f"the engine pool '{model_id}' has too many requests waiting", code="overloaded", headers=RETRY_SOON
    )


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
