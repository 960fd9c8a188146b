"""Render prompt: a registry prompt's messages go first in the conversation, its output schema is enforced.

Before validation, because the rendered messages and the schema's `response_format` are part of the
request the engine must accept; before the cache lookup, because the prompt's version is in the
cache key (a new version never answers from the old one's entries).
"""

from __future__ import annotations

from typing import Any

from llm_serve.engine.pool import deployment_safe
from llm_serve.prompts import PromptError, PromptNotFound, PromptRegistry, PromptVariablesError
from llm_serve.router.context import RequestContext
from llm_serve.router.errors import OpenAIError
from llm_serve.telemetry import tracing

PROMPT_FIELDS = frozenset({"name", "version", "alias", "variables"})


class RenderPrompt:
    def __init__(self, prompts: PromptRegistry | None) -> None:
        self.prompts = prompts

    async def __call__(self, ctx: RequestContext) -> None:
        raw = ctx.prompt_raw
        if raw is None:
            return
        name = raw.get("name") if isinstance(raw, dict) else None
        if isinstance(name, str) and not ctx.caller.may_render(name):
            raise OpenAIError(
                403, f"The API key '{ctx.caller.name}' may not use the prompt '{name}'", code="prompt_not_allowed"
            )
        with tracing.tracer().start_as_current_span(f"prompt {name}" if name else "prompt") as span:
            ctx.row.prompt = self.render(raw, ctx.data)
            span.set_attribute("llm_serve.prompt_version", ctx.row.prompt)

    def render(self, raw: Any, data: dict[str, Any]) -> str:
        """Put the prompt's messages and schema into `data`; returns the prompt's ref (name@version+hash)."""
        if self.prompts is None:
            raise OpenAIError(503, "no prompt registry is loaded on this server", code="prompts_unavailable")
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise OpenAIError(
                422,
                "prompt must be an object with a 'name' (and 'version' or 'alias', 'variables')",
                code="invalid_value",
                param="prompt",
            )
        variables = raw.get("variables") or {}
        if not isinstance(variables, dict):
            raise OpenAIError(422, "prompt.variables must be an object", code="invalid_type", param="prompt.variables")
        unknown = set(raw) - PROMPT_FIELDS
        if unknown:
            raise OpenAIError(
                422, f"prompt has unknown fields: {sorted(unknown)}", code="invalid_value", param="prompt"
            )
        version, alias = raw.get("version"), raw.get("alias")
        if version is not None and (isinstance(version, bool) or not isinstance(version, str | int)):
            raise OpenAIError(422, "prompt.version must be a string", code="invalid_type", param="prompt.version")
        if alias is not None and not isinstance(alias, str):
            raise OpenAIError(422, "prompt.alias must be a string", code="invalid_type", param="prompt.alias")
        try:
            resolved = self.prompts.resolve(
                raw["name"],
                version=None if version is None else str(version),
                alias=alias,
                sticky_key=data.get("user") if isinstance(data.get("user"), str) else None,
            )
            prompt = resolved.prompt
            messages = prompt.render_messages(variables)
        except PromptNotFound as exc:
            raise OpenAIError(404, str(exc), code="prompt_not_found", param="prompt") from None
        except PromptVariablesError as exc:
            raise OpenAIError(400, str(exc), code="invalid_prompt_variables", param=exc.param) from None
        except PromptError as exc:
            raise OpenAIError(400, str(exc), code="invalid_prompt", param="prompt") from None
        existing = data.get("messages") or []
        if not isinstance(existing, list):
            raise OpenAIError(422, "messages must be a list", code="invalid_type", param="messages")
        data["messages"] = [*messages, *existing]
        if prompt.output_schema is not None:
            if data.get("response_format") is not None:
                raise OpenAIError(
                    400,
                    f"prompt {prompt.ref} sets its own output schema; drop response_format",
                    code="invalid_value",
                    param="response_format",
                )
            data["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": deployment_safe(prompt.name), "schema": prompt.output_schema, "strict": True},
            }
        return prompt.ref
