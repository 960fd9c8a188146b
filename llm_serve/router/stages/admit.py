"""Admit: the key's rate limits and budget, checked and counted atomically in the shared state.

Before any work that costs something (retrieval's embedding and search, the cache's embedding, the
engine): a refused request must cost nothing.
"""

from __future__ import annotations

from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.state import StateClient
from llm_serve.telemetry import tracing


class Admit:
    def __init__(self, state: StateClient) -> None:
        self.state = state

    async def __call__(self, ctx: RequestContext) -> None:
        key = ctx.caller.key
        if key is None or (key.rpm is None and key.tpm is None and key.budget_usd is None):
            return
        with tracing.tracer().start_as_current_span("llm_serve.admit") as span:
            refusal = await self.state.admit(ctx.caller.name, key.rpm, key.tpm, key.budget_usd, key.budget_period)
            span.set_attribute("llm_serve.admitted", refusal is None)
        if refusal is not None:
            headers = {"retry-after": str(refusal["retry_after"])} if refusal.get("retry_after") else None
            # OpenAI types an exhausted quota apart from a rate limit; clients back off differently.
            error_type = "insufficient_quota" if refusal["code"] == "insufficient_quota" else None
            raise OpenAIError(429, refusal["message"], code=refusal["code"], type=error_type, headers=headers)
