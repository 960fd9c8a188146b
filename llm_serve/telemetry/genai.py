"""Span names and attributes after the OpenTelemetry GenAI semantic conventions.

The conventions name an inference span `{gen_ai.operation.name} {gen_ai.request.model}` and give
the attribute keys below; trace backends (Phoenix, Langfuse, Datadog, Grafana) build their LLM
views from exactly these keys, so they are spelt here once. Our own facts (cache status, cost,
prompt version, adapter) go under `llm_serve.*`. Prompt and completion text is added only when the
config opts in (`telemetry.tracing.capture_content`).
"""

from __future__ import annotations

import json
from typing import Any

OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_ID = "gen_ai.response.id"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
DATA_SOURCE = "gen_ai.data_source.id"
ERROR_TYPE = "error.type"
FIRST_TOKEN_EVENT = "gen_ai.first_token"

# There is no registered gen_ai.provider.name for vLLM; the conventions allow any lower-case name.
PROVIDER_NAME = "vllm"

OPERATIONS = {"chat": "chat", "completions": "text_completion", "embeddings": "embeddings"}

# Request fields as the conventions name them (only those a request actually sets are recorded).
_REQUEST_PARAMS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
    "stop": "gen_ai.request.stop_sequences",
    "n": "gen_ai.request.choice.count",
    "stream": "gen_ai.request.stream",
}


def operation(route: str) -> str:
    return OPERATIONS.get(route, route)


def span_name(route: str, model: str | None) -> str:
    return f"{operation(route)} {model}" if model else operation(route)


def request_attributes(route: str, body: Any) -> dict[str, Any]:
    """The request-side attributes of an inference span, read off a vLLM request object or a dict.

    Called on the raw request JSON before validation, so it takes only well-typed values and never
    raises: telling the client what is wrong with its request is validation's job, not the span's.
    """
    get = body.get if isinstance(body, dict) else (lambda name: getattr(body, name, None))
    attrs: dict[str, Any] = {OPERATION: operation(route), PROVIDER: PROVIDER_NAME}
    model = get("model")
    if isinstance(model, str) and model:
        attrs[REQUEST_MODEL] = model
    for field, key in _REQUEST_PARAMS.items():
        value = get(field)
        if value is None or key in attrs:
            continue
        if field == "stop":
            if isinstance(value, str):
                value = [value]
            elif not (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
                continue
        elif field == "stream":
            if not isinstance(value, bool):
                continue
        elif not isinstance(value, int | float) or isinstance(value, bool) or (field == "n" and value == 1):
            continue
        attrs[key] = value
    return attrs


def usage_attributes(usage: dict[str, Any] | None) -> dict[str, Any]:
    if not usage:
        return {}
    out = {}
    if usage.get("prompt_tokens") is not None:
        out[INPUT_TOKENS] = int(usage["prompt_tokens"])
    if usage.get("completion_tokens") is not None:
        out[OUTPUT_TOKENS] = int(usage["completion_tokens"])
    return out


def response_attributes(payload: dict[str, Any] | None) -> dict[str, Any]:
    """id, model, finish reasons and usage of a complete (non-streamed or assembled) response."""
    if not payload:
        return {}
    attrs: dict[str, Any] = usage_attributes(payload.get("usage"))
    if payload.get("id"):
        attrs[RESPONSE_ID] = str(payload["id"])
    if payload.get("model"):
        attrs[RESPONSE_MODEL] = str(payload["model"])
    reasons = [str(c.get("finish_reason")) for c in payload.get("choices") or [] if c.get("finish_reason")]
    if reasons:
        attrs[FINISH_REASONS] = reasons
    return attrs


def input_messages(route: str, body: Any) -> str | None:
    """The prompt as the conventions' JSON (only called when content capture is on)."""
    if route == "chat":
        messages = getattr(body, "messages", None) or []
        return json.dumps(
            [{"role": m.get("role"), "parts": [{"type": "text", "content": m.get("content")}]} for m in messages],
            default=str,
        )
    prompt = getattr(body, "prompt", None)
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": prompt}]}], default=str)


def output_messages(payload: dict[str, Any] | None) -> str | None:
    if not payload:
        return None
    out = []
    for choice in payload.get("choices") or []:
        text = (choice.get("message") or {}).get("content") if "message" in choice else choice.get("text")
        out.append(
            {
                "role": "assistant",
                "parts": [{"type": "text", "content": text}],
                "finish_reason": choice.get("finish_reason"),
            }
        )
    return json.dumps(out, default=str)
