"""Admit: the key's rate limits and budget, with the request's worst case reserved.

Before any work that costs something (retrieval's embedding and search, the cache's embedding, the
engine): a refused request must cost nothing. The reservation is the request's prompt (counted with
the pool's tokenizer, prompt_tokens.py) plus its output bound (`max_tokens`, after the limits stage,
or the pool's context) times its choices, at the highest price among the pools it may be sent to.
Settlement swaps it for the real cost (quota.py).
"""

from __future__ import annotations

from llm_serve.config import Config
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.router.prompt_tokens import PromptTokens, bound
from llm_serve.router.quota import KeyQuota
from llm_serve.router.stages.limits import choices, output_cap
from llm_serve.router.state import StateClient, StateUnavailable
from llm_serve.telemetry import tracing

RETRY_SOON = {"retry-after": "1"}


class Admit:
    def __init__(self, config: Config, state: StateClient, prompt_tokens: PromptTokens) -> None:
        self.config = config
        self.state = state
        self.prompt_tokens = prompt_tokens

    async def worst_case(self, ctx: RequestContext) -> tuple[int, float]:
        """Tokens and USD the request can cost at most, on any of its candidate pools."""
        if ctx.route == "embeddings":  # no output; each text's tokens are at most its UTF-8 bytes
            texts = ctx.data.get("input")
            tokens = sum(len(t.encode()) for t in ([texts] if isinstance(texts, str) else texts or []))
            return tokens, ctx.price_factor * self.config.price(ctx.row.model).cost(tokens, 0)
        counted = await self.prompt_tokens.count(ctx.row.model, ctx.route, ctx.body)
        pools = [(m, self._bounds(m)) for m in ctx.candidates or [ctx.row.model]]
        # An API pool's tokenizer is not the router's: its prompts count by the byte bound too, whatever the
        # primary pool's tokenizer said (computed only when an API pool is a candidate).
        unknown = (
            max(counted, bound(ctx.route, ctx.body, self.prompt_tokens.overhead_tokens))
            if any(api for _, (_, _, api) in pools)
            else counted
        )
        asked = output_cap(ctx.body)[0]
        worst_tokens, worst_usd = 0, 0.0
        for model_id, (context, unasked, api) in pools:  # a fallback may allow more than the primary
            own = unknown if api else counted
            prompt = min(own, context) if context is not None else own  # longer: refused at no cost
            per_choice = asked or unasked or 0
            if context is not None:
                per_choice = min(per_choice, context)
            output = choices(ctx.body) * per_choice
            worst_tokens = max(worst_tokens, prompt + output)
            worst_usd = max(worst_usd, self.config.price(model_id, ctx.row.adapter).cost(prompt, output))
            if model_id == ctx.row.model:
                ctx.prompt_tokens_bound = prompt
        return worst_tokens, ctx.price_factor * worst_usd

    def _bounds(self, model_id: str) -> tuple[int | None, int | None, bool]:
        """(context length, output tokens of a request that names no max_tokens, whether it is an API pool).
        An engine's context bounds both; an API pool sends its `default_max_tokens` to the upstream when the
        request names none, so that bound holds there too."""
        model = self.config.model(model_id)
        if model is None:
            return None, None, False
        if model.provider is not None:
            return model.provider.context_window, model.provider.default_max_tokens, True
        return model.engine.max_model_len, model.engine.max_model_len, False

    async def __call__(self, ctx: RequestContext) -> None:
        key = ctx.caller.key
        if key is None or (key.rpm is None and key.tpm is None and key.budget_usd is None):
            return
        quota = KeyQuota(ctx.caller.name, key.rpm, key.tpm, key.budget_usd, key.budget_period)
        with tracing.tracer().start_as_current_span("llm_serve.admit") as span:
            tokens, usd = await self.worst_case(ctx) if key.tpm is not None or key.budget_usd is not None else (0, 0.0)
            try:
                admission = await self.state.admit(quota, tokens, usd)
            except StateUnavailable as exc:  # limits that cannot be checked admit nothing
                raise OpenAIError(
                    503, f"limits cannot be checked right now ({exc})", code="state_unavailable", headers=RETRY_SOON
                ) from None
            ctx.reservation = admission.get("reservation")
            span.set_attribute("llm_serve.admitted", ctx.reservation is not None)
            span.set_attribute("llm_serve.reserved_tokens", tokens)
        if ctx.reservation is None:
            headers = {"retry-after": str(admission["retry_after"])} if admission.get("retry_after") else None
            # OpenAI types an exhausted quota apart from a rate limit; clients back off differently.
            error_type = "insufficient_quota" if admission["code"] == "insufficient_quota" else None
            status = admission.get("status", 429)
            raise OpenAIError(status, admission["message"], code=admission["code"], type=error_type, headers=headers)
