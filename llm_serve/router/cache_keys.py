"""What makes two requests "the same" for the caches and for coalescing.

The exact key hashes the whole validated request (every field vLLM would act on, defaults filled in,
so an omitted field and its default agree) plus what the router adds that the body does not show:
the tenant, the route, the adapter and the prompt version. Only fields that change the transport
and not the answer (stream, stream_options, user, request ids, priority) are left out. A new vLLM
sampling field therefore enters the key by default instead of being silently ignored.

The semantic scope is the same hash with the last user question taken out: everything else (system
prompt, earlier turns, sampling parameters, model, adapter, prompt version, tenant) must match
exactly, and only the question itself may be matched by meaning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

# Fields that shape delivery, not content.
TRANSPORT_FIELDS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "request_id",
        "priority",
        "session_id",
        "kv_transfer_params",
        "ec_transfer_params",
        "stream_interval",
    }
)


@dataclass(frozen=True)
class CacheContext:
    """What decides an answer besides the body."""

    tenant: str
    route: str
    model: str
    adapter: str | None = None
    prompt: str | None = None


def canonical(body: Any) -> dict[str, Any]:
    data = body.model_dump(mode="json") if hasattr(body, "model_dump") else dict(body)
    return {k: v for k, v in data.items() if k not in TRANSPORT_FIELDS}


def _digest(obj: Any) -> str:
    raw = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()


def is_deterministic(body: Any) -> bool:
    """Greedy decoding or a fixed seed: the same request gives the same answer."""
    return getattr(body, "temperature", None) == 0 or getattr(body, "seed", None) is not None


def exact_key(body: Any, ctx: CacheContext) -> str:
    return _digest({"ctx": ctx.__dict__, "body": canonical(body)})


def text_of(content: Any) -> str | None:
    """The text of a message's content (a string, or text parts); None when it holds anything else."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                return None
            texts.append(str(part.get("text", "")))
        return "\n".join(texts)
    return None


def semantic_parts(body: Any, ctx: CacheContext, multi_turn: bool) -> tuple[str, str] | None:
    """(scope, question) for a chat request, or None when it cannot be matched by meaning.

    Only a trailing user message with plain text is a question; with multi_turn off, any earlier
    user or assistant turn makes the request ineligible (an answer depends on the conversation).
    A request with `tools` is never matched by meaning: a call's arguments are copied out of the
    question (a city, an order number), exactly the detail a paraphrase match can miss, and a wrong
    hit is an action taken with the wrong arguments. The exact cache still serves such requests.
    """
    if ctx.route != "chat":
        return None
    data = canonical(body)
    if data.get("tools"):
        return None
    messages = data.get("messages") or []
    if not messages or messages[-1].get("role") != "user":
        return None
    question = text_of(messages[-1].get("content"))
    if not question or not question.strip():
        return None
    earlier = messages[:-1]
    if not multi_turn and any(m.get("role") not in ("system", "developer") for m in earlier):
        return None
    scope = _digest({"ctx": ctx.__dict__, "body": {**data, "messages": earlier}})
    return scope[:32], question
