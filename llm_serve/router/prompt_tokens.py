"""How many tokens a request's prompt holds, for its reservation: exact where the router can tokenize.

A reservation must not be smaller than what the request will cost, or concurrent requests can
overspend a budget. The exact count is the pool's own tokenizer and chat template, which the router
loads from the model's local directory (the bundled model and local directories; a hub id too when
the router's node can reach the hub), and the chat template the pool is configured with
(`models[].tools.chat_template`, which renders the `tools` block the model's own may leave out).
vLLM renders the same template, so the count matches the
engine's `usage.prompt_tokens` up to special tokens, which `MARGIN` covers. Where no tokenizer
loads, the bound is the prompt's UTF-8 bytes (a byte-level BPE token covers at least one byte) plus
`router.prompt_overhead_tokens` for the template. Counting runs in a thread: the tokenizer is Rust
and releases the GIL, so a long prompt does not stall the router's event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from typing import Any

logger = logging.getLogger("llm_serve.router")

MARGIN = 8  # special tokens the engine may add around the rendered template
# What one image can cost as input at most: OpenAI's high-detail tiling of a 2048 x 2048 image is 1105
# tokens, Anthropic's estimate for a 1568 px image about 1600; a bound, not a count.
IMAGE_TOKENS = 1600


class PromptTokens:
    def __init__(self, sources: dict[str, str], overhead_tokens: int, templates: dict[str, str] | None = None) -> None:
        self.sources = sources  # model id -> a local model directory or a hub id
        self.overhead_tokens = overhead_tokens
        self.templates = templates or {}  # model id -> the chat template file its pool renders with
        self._template_text: dict[str, str] = {}
        self._tokenizers: dict[str, Any] = {}
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    async def count(self, model_id: str, route: str, body: Any, *, margin: bool = True) -> int:
        """The prompt's tokens; `margin=False` for a count a client reads (count_tokens), not a reservation."""
        tokenizer = await asyncio.to_thread(self._tokenizer, model_id)
        if tokenizer is not None:
            try:
                template = self._template(model_id)
                return await asyncio.to_thread(_exact, tokenizer, route, body, template) + (MARGIN if margin else 0)
            except Exception as exc:  # an unusual message shape: the bound still holds
                logger.debug("could not tokenize a %s prompt for %s: %s", route, model_id, exc)
        return bound(route, body, self.overhead_tokens)

    def _template(self, model_id: str) -> str | None:
        path = self.templates.get(model_id)
        if path is None:
            return None
        if path not in self._template_text:
            with open(path, encoding="utf-8") as fh:
                self._template_text[path] = fh.read()
        return self._template_text[path]

    def _tokenizer(self, model_id: str) -> Any:
        if model_id in self._tokenizers or model_id in self._failed or model_id not in self.sources:
            return self._tokenizers.get(model_id)
        with self._lock:
            if model_id not in self._tokenizers and model_id not in self._failed:
                try:
                    from transformers import AutoTokenizer

                    self._tokenizers[model_id] = AutoTokenizer.from_pretrained(self.sources[model_id])
                except Exception as exc:
                    logger.warning(
                        "no tokenizer for %s (%s: %s); reservations count its prompts by bytes",
                        model_id,
                        type(exc).__name__,
                        exc,
                    )
                    self._failed.add(model_id)
        return self._tokenizers.get(model_id)


def _plain(item: Any) -> Any:
    return item.model_dump() if hasattr(item, "model_dump") else item


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return "" if content is None else json.dumps(content, default=str)


def _exact(tokenizer: Any, route: str, body: Any, template: str | None = None) -> int:
    if route == "chat":
        messages = [{**m, "content": _text(m.get("content"))} for m in body.messages]
        tools = [_plain(t) for t in body.tools] if body.tools else None
        encoded = tokenizer.apply_chat_template(
            messages, tools=tools, chat_template=template, add_generation_prompt=True, tokenize=True
        )
        ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
        return len(ids)
    return sum(len(ids) if isinstance(ids, list) else len(tokenizer.encode(ids)) for ids in _prompts(body.prompt))


def _prompts(prompt: Any) -> list[Any]:
    """A completions prompt as a list of prompts, each a string or a list of token ids."""
    if isinstance(prompt, str) or (isinstance(prompt, list) and prompt and isinstance(prompt[0], int)):
        return [prompt]
    return list(prompt or [])


def _images(content: Any) -> int:
    if not isinstance(content, list):
        return 0
    return sum(1 for p in content if isinstance(p, dict) and p.get("type") in ("image_url", "input_image", "image"))


def bound(route: str, body: Any, overhead_tokens: int) -> int:
    """An upper bound without a tokenizer: UTF-8 bytes of every text (tool-call arguments included), token
    ids as they are, `IMAGE_TOKENS` per image, plus overhead."""
    if route == "chat":
        size = 0
        for m in body.messages:
            size += len(_text(m.get("content")).encode()) + len(str(m.get("role", "")))
            size += IMAGE_TOKENS * _images(m.get("content"))
            if m.get("tool_calls"):
                size += len(json.dumps([_plain(c) for c in m["tool_calls"]], default=str).encode())
        if body.tools:
            size += len(json.dumps([_plain(t) for t in body.tools], default=str))
        return size + overhead_tokens
    total = 0
    for ids in _prompts(body.prompt):
        total += len(ids) if isinstance(ids, list) else len(str(ids).encode())
    return total + overhead_tokens
