"""Which engine pools may answer a request, in the order to try them.

A request names a served model, a routing alias of one, or `auto`; the result is the primary pool
followed by its configured fallbacks, limited to pools the caller's key may use and to
`routing.max_attempts`. `auto` takes the first rule that fits the request and, among its models
that the key may use, the cheapest (input plus output price).
"""

from __future__ import annotations

from typing import Any

from llm_serve.config import AUTO_MODEL, Config
from llm_serve.router.auth import Caller
from llm_serve.router.errors import OpenAIError

CHARS_PER_TOKEN = 4


def estimate_tokens(data: dict[str, Any]) -> int:
    """A cheap prompt-length estimate for `auto` rules (no tokenizer in the router)."""
    text = data.get("prompt") if "prompt" in data else data.get("messages")
    return len(str(text or "")) // CHARS_PER_TOKEN + 1


def _not_found(model_id: str) -> OpenAIError:
    return OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")


def _forbidden(caller: Caller, model_id: str) -> OpenAIError:
    return OpenAIError(
        403, f"The API key '{caller.name}' may not use the model '{model_id}'", code="model_not_allowed", param="model"
    )


def route_candidates(config: Config, requested: str, caller: Caller, data: dict[str, Any]) -> list[str]:
    routing = config.routing
    if requested == AUTO_MODEL and routing.auto:
        primary = _auto(config, caller, data)
    else:
        primary = routing.aliases.get(requested, requested)
        if config.model(primary) is None:
            raise _not_found(requested)
        if not (caller.may_use(requested) or caller.may_use(primary)):
            raise _forbidden(caller, requested)
    fallbacks = [m for m in routing.fallbacks.get(primary, []) if m != primary and caller.may_use(m)]
    return [primary, *fallbacks][: routing.max_attempts]


def _auto(config: Config, caller: Caller, data: dict[str, Any]) -> str:
    tokens = estimate_tokens(data)
    uses_tools = bool(data.get("tools"))
    for rule in config.routing.auto:
        if rule.max_input_tokens is not None and tokens > rule.max_input_tokens:
            continue
        if rule.needs_tools is not None and rule.needs_tools != uses_tools:
            continue
        allowed = [m for m in rule.models if caller.may_use(m)]
        if not allowed:
            continue
        return min(allowed, key=lambda m: config.price(m).input_per_1m + config.price(m).output_per_1m)
    raise OpenAIError(400, "no routing.auto rule allows this request for this key", code="no_route", param="model")
