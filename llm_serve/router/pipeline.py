"""The generation path (/v1/chat/completions, /v1/completions) as a fixed list of stages.

Each stage is a small module under router/stages/ with one job. It reads and extends the request's
`RequestContext`, and may end the request early by returning a response (a cache hit, a RAG refusal)
or raising an `OpenAIError` (any 4xx or 5xx). Their order, and why:

1. **parse**: the body's `model`, and llm-serve's extensions (`rag`, `prompt`, `cache`) taken off it.
2. **resolve**: model, routing alias, RAG alias, adapter and its version, and the fallback pools,
   limited to what the key may use. Nothing is known about the request's cost or cache key before it.
3. **guard input**: the guardrail policies' input checks (router/guardrails.py) on the caller's own
   text: a block is a 400 that reserves and costs nothing; a redaction changes what every later stage
   (and the cache key) sees. Before rendering, so the operator's template is never what is judged.
4. **render prompt**: a registry prompt's messages and output schema put into the body. This comes
   before validation because the body must be checked as it will be sent.
5. **validate**: against vLLM's protocol models. Streams always ask for usage.
6. **limits**: the caps on `n`, output tokens, messages and prompt length (global, tightened per key).
   A request over a cap reserves nothing and costs nothing.
7. **admit**: rate limits and budget. This comes before anything that costs money or engine time:
   retrieval embeds and searches, the semantic cache embeds, the engine generates.
8. **retrieve**: RAG search and grounding. It runs after admission, and before the cache lookup,
   because the grounded messages are part of what the answer depends on.
9. **cache lookup**: exact and semantic. It comes only now, once the prompt version, the adapter
   version and the grounded messages are known, since each of them is part of the key.
10. **dispatch**: the engine pool, with fallbacks. Identical requests in flight share one call.
11. **respond**: a JSON answer (priced, output-guarded, cached) or a relayed stream (guarded event by
   event), which settles itself at its end. Cache hits pass the same output checks.

**Settlement** (ledger row, span, metrics, log) runs exactly once, in the `finally` below. The one
exception is a relayed stream: it outlives this handler and settles in its own `finally`. The order
of the list below is the order of the path. This is the one place it is written.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.context import RequestContext
from llm_serve.router.observe import Observer
from llm_serve.router.stages.parse import read_json
from llm_serve.router.stages.settle import Settler, settled
from llm_serve.telemetry import genai, tracing

Stage = Callable[[RequestContext], Awaitable[Response | None]]
Translate = Callable[[dict[str, Any], Caller], Awaitable[dict[str, Any]]]


class GenerationPipeline:
    def __init__(
        self,
        stages: Sequence[tuple[str, Stage]],
        *,
        keys: KeyRing,
        max_body_bytes: int,
        max_inflight: int,
        observer: Observer,
        settle: Settler,
    ) -> None:
        self.stages = tuple(stages)
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self.max_inflight = max_inflight
        self.observer = observer
        self.settle = settle

    @property
    def order(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.stages)

    async def handle(
        self,
        request: Request,
        route: str,
        *,
        api: str = "openai",
        translate: Translate | None = None,
        caller: Caller | None = None,
        price_factor: float = 1.0,
    ) -> Response:
        """Answer one request. An API adapter (Responses, Anthropic) passes `translate`, which turns its
        body into a chat request for this caller before any stage runs, and names itself as `api`. The
        batch runner passes the batch's `caller` (authenticated when the batch was created) and its
        discount as `price_factor`."""
        self.observer.check_capacity(self.max_inflight)  # overload is refused before any work
        if caller is None:
            with tracing.tracer().start_as_current_span("llm_serve.auth") as auth_span:
                caller = self.keys.caller(request.headers)
                auth_span.set_attribute("llm_serve.key", caller.name)
        data = await read_json(request, self.max_body_bytes)
        if translate is not None:
            data = await translate(data, caller)
        ctx = RequestContext.start(route, caller, request.headers, data)
        ctx.row.api = api
        ctx.price_factor = price_factor
        # Only a recording tracer reads the attributes: with tracing off, none are built per request.
        self.observer.begin(ctx, genai.request_attributes(route, data) if tracing.enabled() else {})
        return await self.run(ctx)

    async def run(self, ctx: RequestContext) -> Response:
        """The stages in order, until one answers; then settlement, whatever happened."""
        return await settled(ctx, self.settle, lambda: self._stages(ctx))

    async def _stages(self, ctx: RequestContext) -> Response:
        for _name, stage in self.stages:
            response = await stage(ctx)
            if response is not None:
                return response
        raise AssertionError("the last stage always answers")
