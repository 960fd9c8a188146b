"""The router's view of the adapter registries of LoRA-enabled pools.

Read here, in the router, so that an unknown adapter is a 404 before any engine is bothered, and a
newly published adapter is servable within `lora.refresh_s` without a restart.
"""

from __future__ import annotations

import asyncio
import logging
import time

from llm_serve.adapters import AdapterInfo, AdapterRegistry
from llm_serve.config import Config
from llm_serve.router.errors import OpenAIError

logger = logging.getLogger("llm_serve.router")

FORCED_RELIST_S = 1.0  # an unknown adapter id re-lists the registry at most this often


class AdapterCatalog:
    """Every pool's adapters by model id, re-listed at most every `refresh_s` (the shortest of the pools')."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.pools = {m.id: m for m in config.models if m.lora.enabled}
        self._registries = {
            root: AdapterRegistry(root) for root in {config.adapter_registry(m) for m in self.pools.values()}
        }
        self._listing: dict[str, AdapterInfo] = {}
        self._listed_at = -1e18
        self._lock = asyncio.Lock()

    async def _refresh(self) -> None:
        refresh = min((m.lora.refresh_s for m in self.pools.values()), default=0.0)
        if time.monotonic() - self._listed_at < refresh:
            return
        async with self._lock:
            if time.monotonic() - self._listed_at < refresh:
                return
            listing: dict[str, AdapterInfo] = {}
            try:
                for root, registry in self._registries.items():
                    for info in await asyncio.to_thread(registry.list):
                        pool = self.pools.get(info.base_model_id)
                        if pool is not None and self.config.adapter_registry(pool) == root:
                            listing[info.model_id] = info
            except OSError as exc:  # keep serving what was known; a storage blip is not a mass 404
                logger.warning("adapter registry listing failed (%s); keeping the last one", exc)
                self._listed_at = time.monotonic()
                return
            self._listing, self._listed_at = listing, time.monotonic()

    async def all(self) -> list[AdapterInfo]:
        if not self.pools:
            return []
        await self._refresh()
        return list(self._listing.values())

    async def find(self, model_id: str) -> AdapterInfo | None:
        """`<base>:<adapter>`, or an adapter's bare name when exactly one pool has it."""
        if not self.pools:
            return None
        await self._refresh()
        if model_id in self._listing:
            return self._listing[model_id]
        base, sep, name = model_id.rpartition(":")
        if sep and base in self.pools:
            if time.monotonic() - self._listed_at >= FORCED_RELIST_S:
                self._listed_at = -1e18  # maybe just published: look again (at most once a second)
                await self._refresh()
            if model_id in self._listing:
                return self._listing[model_id]
            raise OpenAIError(
                404, f"The adapter '{name}' of model '{base}' does not exist", code="model_not_found", param="model"
            )
        named = [info for info in self._listing.values() if info.name == model_id]
        return named[0] if len(named) == 1 else None
