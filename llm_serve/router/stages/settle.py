"""Settle: price what was produced, then close the books on the request exactly once.

Settlement writes the ledger row, ends the span, records the metrics and logs the request line. It
runs once per request whatever happened (answered, refused, failed, client gone): the pipeline calls
it in a `finally`, and a relayed stream, which outlives the handler, calls it from its own `finally`
before its last event. `settled` makes a second call a no-op. A request that was refused before it
named any model gets no ledger row (nothing to bill or to group by), but still its span and log.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.responses import Response

from llm_serve.config import Config
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.observe import Observer, current
from llm_serve.router.state import StateClient

logger = logging.getLogger("llm_serve.router")

# Answers served from another request's engine call: priced by `cache.hit_billing`.
SHARED_ANSWERS = ("hit", "semantic_hit", "coalesced")


def price(config: Config, ctx: RequestContext, *, hit: bool) -> float:
    """The cost of the tokens in `ctx.row`: the model's (or adapter's) price, or the cache-hit billing."""
    row = ctx.row
    model_price = config.price(row.model, row.adapter)
    if not hit:
        return model_price.cost(row.prompt_tokens, row.completion_tokens, row.cached_tokens)
    billing = config.cache.hit_billing
    if billing == "free":
        return 0.0
    if billing == "full":
        return model_price.cost(row.prompt_tokens, row.completion_tokens)
    return model_price.cost(row.prompt_tokens, 0, cached_tokens=row.prompt_tokens)


def price_usage(config: Config, ctx: RequestContext, usage: dict[str, Any] | None) -> float:
    """Take the engine's (or a cached answer's) usage into the row and price it; returns the cost."""
    ctx.take_usage(usage)
    ctx.row.cost_usd = price(config, ctx, hit=ctx.row.cache in SHARED_ANSWERS)
    return ctx.row.cost_usd


class Settler:
    def __init__(self, state: StateClient, observer: Observer) -> None:
        self.state = state
        self.observer = observer

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.settled:
            return
        ctx.settled = True
        row = ctx.row
        row.latency_ms = round(ctx.elapsed_ms, 2)
        row.ts = time.time()
        self.observer.end(ctx)
        ctx.log()
        if not row.model and 400 <= row.status < 499:
            return  # refused before naming a model: not worth a ledger row
        try:
            await self.state.record(row)
        except Exception:
            logger.exception("could not record request %s", row.request_id)


async def settled(
    ctx: RequestContext, settle: Callable[[RequestContext], Awaitable[None]], work: Callable[[], Awaitable[Response]]
) -> Response:
    """Run a request's `work` inside its span, note how it ended, and settle it once in a `finally`.

    A response that settles itself (a relayed stream, which outlives this call: `settles_itself`) is
    left to do so. A 4xx or 5xx is the request's status; a cancellation is 499 (the client went away);
    anything unexpected is a 500 that the error handler answers, still with one ledger row.
    """
    settles_itself = False
    try:
        with current(ctx.span):
            response = await work()
        settles_itself = getattr(response, "settles_itself", False)
        return response
    except OpenAIError as exc:
        ctx.fail(exc)
        raise
    except asyncio.CancelledError:
        ctx.finish(499, "client disconnected")
        raise
    except Exception as exc:
        ctx.finish(500, f"{type(exc).__name__}: {exc}", "internal_error")
        raise
    finally:
        if not settles_itself:
            await asyncio.shield(settle(ctx))
