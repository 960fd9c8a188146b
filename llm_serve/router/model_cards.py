"""GET /v1/models and /v1/models/{id}: every name a client may send as `model`, as OpenAI model cards.

The list holds the served pools, RAG aliases, embedding models, routing aliases and published
adapters, filtered to what the caller's key may use; `root`/`parent` say what an alias or an adapter
stands on.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import FastAPI
from starlette.requests import Request

from llm_serve.adapters import AdapterInfo
from llm_serve.config import Config, EmbedderConfig, ModelConfig, RagAlias
from llm_serve.models.quantize import checkpoint_quantization
from llm_serve.router.adapter_catalog import AdapterCatalog
from llm_serve.router.auth import Caller, KeyRing
from llm_serve.router.errors import OpenAIError

OWNER = "llm-serve"


class ModelCards:
    def __init__(self, config: Config, embedders: dict[str, Any], adapters: AdapterCatalog, keys: KeyRing) -> None:
        self.config = config
        self.embedders = embedders
        self.adapters = adapters
        self.keys = keys
        self.created = int(time.time())
        self.quantization: dict[str, str | None] = {}  # per pool, read once: its source does not change

    def install(self, app: FastAPI) -> None:
        app.add_api_route("/v1/models", self.list_models, methods=["GET"])
        app.add_api_route("/v1/models/{model_id:path}", self.get_model, methods=["GET"])

    def _card(self, model_id: str, **fields: Any) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self.created, "owned_by": OWNER, **fields}

    def model_card(self, model: ModelConfig | EmbedderConfig | RagAlias) -> dict[str, Any]:
        if isinstance(model, ModelConfig) and model.provider is not None:
            # The upstream's model name and API kind, never its URL (it may carry an account or deployment).
            provider = model.provider
            return self._card(
                model.id, root=provider.model or model.id, parent=None, type="provider", provider=provider.kind
            )
        if isinstance(model, ModelConfig):
            card = self._card(model.id, root=model.source, parent=None, max_model_len=model.engine.max_model_len)
            quantization = self.quantization.setdefault(model.id, checkpoint_quantization(model.source))
            return card | ({"quantization": quantization} if quantization else {})
        if isinstance(model, RagAlias):
            return self._card(model.id, root=model.model, parent=model.model, type="rag", collection=model.collection)
        return self._card(model.id, root=model.source, parent=None, type="embedding")

    def alias_card(self, alias: str, target: str) -> dict[str, Any]:
        return self._card(alias, root=target, parent=target, type="alias")

    def adapter_card(self, info: AdapterInfo) -> dict[str, Any]:
        return self._card(
            info.model_id,
            root=info.base_model_id,
            parent=info.base_model_id,
            type="adapter",
            adapter=info.name,
            adapter_created_at=info.metadata.get("created_at"),
        )

    async def list_models(self, request: Request) -> dict[str, Any]:
        caller = self.keys.caller(request.headers)
        models = [
            *self.config.models,
            *self.config.rag.aliases,
            *(m for m in self.config.embedding_models if m.id in self.embedders),
        ]
        cards = [self.model_card(m) for m in models]
        cards += [self.alias_card(a, t) for a, t in self.config.routing.aliases.items()]
        cards += [self.adapter_card(info) for info in await self.adapters.all()]
        return {"object": "list", "data": [c for c in cards if callable_by(caller, c)]}

    async def get_model(self, model_id: str, request: Request) -> dict[str, Any]:
        caller = self.keys.caller(request.headers)
        card = await self._find(model_id)
        if card is None or not callable_by(caller, card):  # what a key may not call does not exist for it
            raise OpenAIError(404, f"The model '{model_id}' does not exist", code="model_not_found", param="model")
        return card

    async def _find(self, model_id: str) -> dict[str, Any] | None:
        model = (
            self.config.model(model_id)
            or self.config.rag_alias(model_id)
            or (self.config.embedder(model_id) if model_id in self.embedders else None)
        )
        if model is not None:
            return self.model_card(model)
        if model_id in self.config.routing.aliases:
            return self.alias_card(model_id, self.config.routing.aliases[model_id])
        adapter = await self.adapters.find(model_id)
        return self.adapter_card(adapter) if adapter is not None else None


def callable_by(caller: Caller, card: dict[str, Any]) -> bool:
    """Whether the key may send this card's id as `model`: the rules of the resolve stage and routing.py."""
    kind = card.get("type")
    if kind == "alias":  # a routing alias is allowed by its own id or its target's
        return caller.may_use(card["id"]) or caller.may_use(card["root"])
    if kind == "adapter":  # `base:adapter`, or the adapter's bare name
        return caller.may_use(card["id"]) or caller.may_use(card["adapter"])
    if kind == "rag":  # named by the key, or over a collection the key may search (not by its model)
        return caller.may_use_alias(card["id"], card["collection"])
    return caller.may_use(card["id"])  # a pool, an embedding model
