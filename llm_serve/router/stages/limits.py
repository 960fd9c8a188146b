"""Limits: the caps on how much work one request may ask for (config `limits`, tightened per key).

After validation (the fields are known to be well typed) and before admission (a request over a cap
reserves nothing and never reaches an engine). Without caps one request could hold an engine for
minutes (`n: 1000`) while every other caller waits behind it. A request that sets no `max_tokens`
gets the cap, so its reservation and its engine time are bounded too.
"""

from __future__ import annotations

from typing import Any

from llm_serve.config import Config, RequestLimits
from llm_serve.router.auth import Caller
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError


def limits_for(config: Config, caller: Caller) -> RequestLimits:
    """The service's caps, tightened by the caller's key."""
    return config.limits.tightened(caller.key.limits if caller.key is not None else None)


def over(what: str, value: int, cap: int, param: str) -> OpenAIError:
    return OpenAIError(400, f"{what} is {value}; at most {cap} is allowed", code="limit_exceeded", param=param)


def choices(body: Any) -> int:
    """Completions the request asks for: `n` per prompt, and a completions request may send several prompts."""
    n = getattr(body, "n", None) or 1
    prompt = getattr(body, "prompt", None)
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return n * len(prompt)  # a batch of prompts (strings or token lists), not one tokenized prompt
    return n


def output_cap(body: Any) -> tuple[int | None, str]:
    """The request's own bound on output tokens per choice, and the field it came from."""
    completion = getattr(body, "max_completion_tokens", None)
    if completion is not None:
        return completion, "max_completion_tokens"
    return getattr(body, "max_tokens", None), "max_tokens"


class Limits:
    def __init__(self, config: Config) -> None:
        self.config = config

    async def __call__(self, ctx: RequestContext) -> None:
        caps = limits_for(self.config, ctx.caller)
        body = ctx.body
        if caps.max_n is not None and (count := choices(body)) > caps.max_n:
            raise over("the number of choices (n, times the prompts sent)", count, caps.max_n, "n")
        messages = getattr(body, "messages", None)
        if caps.max_messages is not None and messages is not None and len(messages) > caps.max_messages:
            raise over("the number of messages", len(messages), caps.max_messages, "messages")
        if caps.max_prompt_tokens is not None and ctx.estimated_prompt_tokens > caps.max_prompt_tokens:
            raise over(
                "the prompt (estimated tokens)",
                ctx.estimated_prompt_tokens,
                caps.max_prompt_tokens,
                "messages" if messages is not None else "prompt",
            )
        if caps.max_tokens is not None:
            asked, field = output_cap(body)
            if asked is None:
                body.max_tokens = caps.max_tokens
            elif asked > caps.max_tokens:
                raise over(field, asked, caps.max_tokens, field)
