"""The router's validated request as an OpenAI API body, and the upstream's answers back.

The router validates every request against vLLM's protocol models, which carry vLLM's own fields
(`top_k`, `guided_json`, ...) and the `continuous_usage_stats` it asks an engine for. OpenAI, Azure
and the managed OpenAI-compatible endpoints refuse unknown fields, so only OpenAI's parameters go
upstream, plus those a provider names in `pass_params` (a vLLM upstream understands `top_k`).
Answers come back with the client-facing model id in `model`, as an engine pool's do.
"""

from __future__ import annotations

from typing import Any

from llm_serve.config import ProviderConfig

CHAT_PARAMS = frozenset(
    {
        "model", "messages", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "max_tokens",
        "max_completion_tokens", "n", "presence_penalty", "response_format", "seed", "stop", "stream",
        "stream_options", "temperature", "top_p", "tools", "tool_choice", "parallel_tool_calls", "user",
        "metadata", "reasoning_effort", "service_tier", "prediction", "modalities", "audio", "store",
    }
)  # fmt: skip
COMPLETION_PARAMS = frozenset(
    {
        "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
        "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user",
    }
)  # fmt: skip
PARAMS = {"chat": CHAT_PARAMS, "completions": COMPLETION_PARAMS}


def request_fields(body: Any) -> dict[str, Any]:
    """The fields the client (or a router stage) set, as JSON: defaults the protocol model filled in stay
    out, so the upstream applies its own."""
    if isinstance(body, dict):
        return dict(body)
    return body.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def upstream_body(route: str, body: Any, provider: ProviderConfig, upstream_model: str) -> dict[str, Any]:
    fields = request_fields(body)
    allowed = PARAMS[route] | set(provider.pass_params)
    out = {k: v for k, v in fields.items() if k in allowed}
    out["model"] = upstream_model
    if out.get("max_tokens") is None and out.get("max_completion_tokens") is None:
        out["max_tokens"] = provider.default_max_tokens  # the output bound the reservation counted on
    if provider.kind == "openai" and route == "chat" and "max_tokens" in out:
        # OpenAI's reasoning models refuse `max_tokens`; every current chat model takes this name.
        limit = out.pop("max_tokens")
        out.setdefault("max_completion_tokens", limit)
    if out.get("stream"):
        # Usage at the end is what prices the stream; per-chunk usage only where the upstream has it.
        options = {"include_usage": True}
        if provider.continuous_usage:
            options["continuous_usage_stats"] = True
        out["stream_options"] = options
    else:
        out.pop("stream_options", None)
    return out


def served_as(payload: dict[str, Any], model_id: str) -> dict[str, Any]:
    """An upstream answer or chunk, named for the model id the client asked for."""
    if "model" in payload:
        payload["model"] = model_id
    return payload
