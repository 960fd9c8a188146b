"""Settle: price what was produced, then close the books on the request exactly once.

Settlement writes the ledger row (releasing the request's reservation), ends the span, records the
metrics and logs the request line. It runs once per request whatever happened (answered, refused,
failed, client gone): the pipeline calls it in a `finally`, and a relayed stream, which outlives the
handler, calls it from its own `finally` before its last event. `settled` makes a second call a
no-op. A request that was refused before it named any model gets no ledger row (nothing to bill or
to group by), but still its span and log.

A request that did not get its answer (client gone, timeout) while the engine call it owns is still
running is settled once that call ends (coalesce.py: it runs on, or ends when nobody reads it), so
the row carries the engine's own count of what it produced. The wait is bounded by
`server.billing_grace_s`; past it the call is aborted and the row says what is unknown.
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
from llm_serve.router.record_spool import RecordSpool, spool_file
from llm_serve.router.state import StateClient

logger = logging.getLogger("llm_serve.router")

# How long an aborted flight gets to report its last usage.
FLIGHT_CANCEL_WAIT_S = 5.0
# Answers served from another request's engine call: priced by `cache.hit_billing`.
SHARED_ANSWERS = ("hit", "semantic_hit", "coalesced")
# Settlements in progress, referenced until they end (asyncio keeps only weak references to tasks).
_SETTLING: set[asyncio.Task[None]] = set()


def price(config: Config, ctx: RequestContext, *, hit: bool) -> float:
    """The cost of the tokens in `ctx.row`: the model's (or adapter's) price, or the cache-hit billing."""
    row = ctx.row
    model_price = config.price(row.model, row.adapter)
    if not hit:
        return ctx.price_factor * model_price.cost(row.prompt_tokens, row.completion_tokens, row.cached_tokens)
    billing = config.cache.hit_billing
    if billing == "free":
        return 0.0
    if billing == "full":
        return ctx.price_factor * model_price.cost(row.prompt_tokens, row.completion_tokens)
    return ctx.price_factor * model_price.cost(row.prompt_tokens, 0, cached_tokens=row.prompt_tokens)


def price_usage(config: Config, ctx: RequestContext, usage: dict[str, Any] | None) -> float:
    """Take the engine's (or a cached answer's) usage into the row and price it; returns the cost."""
    ctx.take_usage(usage)
    ctx.row.cost_usd = price(config, ctx, hit=ctx.row.cache in SHARED_ANSWERS)
    return ctx.row.cost_usd


class Settler:
    def __init__(self, config: Config, state: StateClient, observer: Observer) -> None:
        self.config = config
        self.state = state
        self.observer = observer
        self._deferred: set[asyncio.Task[None]] = set()  # settlements waiting for their engine call
        # Rows the state actor did not take (it was down or slow): kept on disk and offered again.
        self.spool = RecordSpool(spool_file(config.home_path / "spool", config.app_name), state.record)

    async def __call__(self, ctx: RequestContext) -> None:
        if ctx.settled:
            return
        flight = ctx.flight
        if flight is not None and ctx.owns_flight and not flight.done and ctx.row.status != 200:
            ctx.settled = True  # from now on only the deferred settlement writes this request
            ctx.row.latency_ms = round(ctx.elapsed_ms, 2)  # the client's wait, not the pricing wait
            task = asyncio.get_running_loop().create_task(self._after_flight(ctx))
            self._deferred.add(task)
            task.add_done_callback(self._deferred.discard)
            return
        ctx.row.latency_ms = round(ctx.elapsed_ms, 2)
        await self._write(ctx)

    async def _after_flight(self, ctx: RequestContext) -> None:
        """Price an unanswered request from the engine call it owns, once that call has ended."""
        flight = ctx.flight
        if not await flight.wait(self.config.server.billing_grace_s):
            flight.cancel()
            await flight.wait(FLIGHT_CANCEL_WAIT_S)
        row = ctx.row
        if flight.usage is not None:
            price_usage(self.config, ctx, flight.usage)
            note = "priced from the engine's usage after the client left"
        else:
            row.prompt_tokens = row.prompt_tokens or ctx.prompt_tokens_bound or ctx.estimated_prompt_tokens
            row.cost_usd = price(self.config, ctx, hit=False)
            note = "the engine reported no usage: prompt estimated, output unknown"
        row.error = f"{row.error}; {note}" if row.error else note
        await self._write(ctx)

    async def _write(self, ctx: RequestContext) -> None:
        ctx.settled = True
        if len(self.spool):  # rows left by an earlier failure (or a dead replica) go first
            self.spool.start()
        row = ctx.row
        row.ts = time.time()
        try:  # the span, metrics and log line are worth less than the row: they never stop its write
            self.observer.end(ctx)
            ctx.log()
        except Exception:
            logger.exception("request %s: closing its span and metrics failed", row.request_id)
        if not row.model and 400 <= row.status < 499:
            return  # refused before naming a model: not worth a ledger row
        try:
            await self.state.record(row, ctx.reservation)
        except Exception as exc:  # kept and offered again: a row is never dropped
            logger.warning("request %s: the ledger row waits in the router's spool (%s)", row.request_id, exc)
            self.spool.add(row, ctx.reservation)
        except asyncio.CancelledError:  # the same: the state takes a row once, so offering it again is safe
            logger.warning("request %s: the ledger row's write was cancelled; it waits in the spool", row.request_id)
            self.spool.add(row, ctx.reservation)
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this task's own cancellation goes on; another's stops here
                raise


async def held(settlement: Awaitable[None]) -> None:
    """Run a settlement in a task of its own, referenced until it ends: a cancelled caller (the client
    left, and Serve or anyio cancel the request's task again at every await) can neither interrupt it
    nor let it be collected half-way, which a bare `asyncio.shield` of a coroutine allows."""
    task = asyncio.ensure_future(settlement)
    _SETTLING.add(task)
    task.add_done_callback(_SETTLING.discard)
    await asyncio.shield(task)


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
            await held(settle(ctx))
