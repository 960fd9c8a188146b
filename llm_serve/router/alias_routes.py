"""`/admin/aliases`: read and move served aliases (router/served_aliases.py); admin keys only.

A move is checked against what this application serves before it is written: the model must be one
of its pools, the adapter one that pool has, the prompt a version the registry holds, and the alias
name must not shadow a model id or a configured alias, so a promotion can never point traffic at
something that would 404. `llm-serve promote` is the usual caller; it moves an alias only after the
evaluation gates pass.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request

from llm_serve.config import AUTO_MODEL, Config
from llm_serve.prompts import PromptNotFound, PromptRegistry
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.admin import AdminRoutes
from llm_serve.router.errors import OpenAIError, invalid_body
from llm_serve.router.served_aliases import ALIAS_NAME, NOTE_MAX_CHARS, AliasCache, AliasTarget
from llm_serve.router.stages.parse import read_json
from llm_serve.router.state import StateClient, StateUnavailable


class AliasMove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(..., min_length=1, description="A served pool, or `pool:adapter`.")
    adapter: str | None = Field(None, min_length=1, description="An adapter of the pool (or give `pool:adapter`).")
    prompt: str | None = Field(None, pattern=r"^[^@\s]+@[^@\s]+$", description="name@version pinned through the alias.")
    note: str | None = Field(None, max_length=NOTE_MAX_CHARS)
    evaluation: str | None = Field(None, max_length=256, description="What allowed the move (an MLflow run id).")
    expected: int | None = Field(
        None, ge=0, description="The id of the move the caller saw as current (0: none); 409 if another came since."
    )


class AliasRoutes:
    def __init__(
        self,
        config: Config,
        admin: AdminRoutes,
        state: StateClient,
        adapters: AdapterCatalog,
        prompts: PromptRegistry | None,
        cache: AliasCache,
    ) -> None:
        self.config = config
        self.admin = admin
        self.state = state
        self.adapters = adapters
        self.prompts = prompts
        self.cache = cache
        self.reserved = {
            *(m.id for m in config.models),
            *(m.id for m in config.embedding_models),
            *(a.id for a in config.rag.aliases),
            *config.routing.aliases,
            AUTO_MODEL,
        }

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/admin/aliases", self.list, methods=["GET"])
        app.add_api_route("/admin/aliases/{alias}", self.show, methods=["GET"])
        app.add_api_route("/admin/aliases/{alias}", self.move, methods=["PUT"])
        app.add_api_route("/admin/aliases/{alias}/rollback", self.rollback, methods=["POST"])

    async def _call(self, method: str, *args: Any) -> Any:
        try:
            return await getattr(self.state, method)(*args)
        except StateUnavailable as exc:
            raise OpenAIError(503, str(exc), code="state_unavailable", headers={"retry-after": "1"}) from None

    async def list(self, request: Request) -> dict[str, Any]:
        self.admin._admin(request)
        return {"object": "list", "data": list((await self._call("aliases")).values())}

    async def show(self, alias: str, request: Request) -> dict[str, Any]:
        self.admin._admin(request)
        history = await self._call("alias_history", alias)
        if not history:
            raise OpenAIError(404, f"no served alias '{alias}'", code="alias_not_found", param="alias")
        return {"object": "served_alias", "alias": alias, "current": history[0], "history": history}

    async def move(self, alias: str, request: Request) -> dict[str, Any]:
        caller = self.admin._admin(request)
        if not ALIAS_NAME.match(alias) or alias in self.reserved:
            raise OpenAIError(
                400,
                f"'{alias}' cannot be a served alias: it must match {ALIAS_NAME.pattern} and not be a model id or "
                "a configured alias",
                code="invalid_value",
                param="alias",
            )
        try:
            body = AliasMove.model_validate(await read_json(request, self.config.server.max_body_bytes))
        except ValidationError as exc:
            raise invalid_body(exc.errors()) from None
        if await self.adapters.find(alias) is not None:
            raise OpenAIError(
                400, f"'{alias}' is an adapter's name: an alias must not shadow it", code="invalid_value", param="alias"
            )
        target = await self._check(body)
        moved = await self._call("move_alias", alias, target, caller.name, body.note, body.evaluation, body.expected)
        if moved is None:
            raise OpenAIError(
                409,
                f"the served alias '{alias}' was moved since move {body.expected}; evaluate against its new target",
                code="alias_moved",
            )
        self.cache.invalidate()  # this replica sees it at once; the others within promotion.refresh_s
        return {"object": "served_alias", "alias": alias, "current": moved}

    async def rollback(self, alias: str, request: Request) -> dict[str, Any]:
        caller = self.admin._admin(request)
        moved = await self._call("rollback_alias", alias, caller.name, None)
        if moved is None:
            raise OpenAIError(
                409, f"the served alias '{alias}' has no earlier target to roll back to", code="no_rollback_target"
            )
        self.cache.invalidate()
        return {"object": "served_alias", "alias": alias, "current": moved}

    async def _check(self, body: AliasMove) -> AliasTarget:
        pool, colon, adapter = body.model.partition(":")
        if colon and body.adapter is not None:
            raise OpenAIError(400, "give the adapter in `model` or in `adapter`, not both", code="invalid_value")
        adapter = (adapter or None) if colon else body.adapter
        if self.config.model(pool) is None:
            raise OpenAIError(404, f"The model '{pool}' is not served here", code="model_not_found", param="model")
        if adapter is not None:
            found = await self.adapters.find(f"{pool}:{adapter}")  # raises the 404 of an unknown adapter
            if found is None:
                raise OpenAIError(404, f"no adapter '{adapter}' of '{pool}'", code="model_not_found", param="adapter")
        if body.prompt is not None:
            name, _, version = body.prompt.partition("@")
            if self.prompts is None:
                raise OpenAIError(400, "no prompt registry is loaded on this server", code="invalid_value")
            try:
                self.prompts.get(name, version)
            except PromptNotFound as exc:
                raise OpenAIError(404, str(exc), code="prompt_not_found", param="prompt") from None
        return AliasTarget(pool, adapter, body.prompt)
