"""Ray Serve LLM's LLMServer, loading LoRA adapters from our adapter registry.

LLMServer already multiplexes adapters (Serve's model multiplexing routes `base:adapter` requests
to replicas that hold the adapter and evicts the least recently used past a bound per replica) and
hands them to vLLM at first use; only its loader insists on cloud storage. This subclass swaps the
loader for the registry's: a local directory or a pyarrow filesystem URI, copied to a per-node
cache when remote. Nothing restarts when a new adapter is published.
"""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path
from typing import Any

from ray import serve
from ray.llm._internal.serve.core.configs.llm_config import DiskMultiplexConfig
from ray.llm._internal.serve.core.server.llm_server import LLMServer

from llm_serve.adapters import AdapterRegistry

REGISTRY_KEY = "llm_serve_adapter_registry"
CACHE_KEY = "llm_serve_adapter_cache"


class AdapterNotFound(ValueError):
    """The model id names an adapter the registry does not hold (for this base model)."""


def split_adapter_id(model_id: str) -> tuple[str, str]:
    base, sep, name = model_id.rpartition(":")
    if not sep or not base or not name:
        raise AdapterNotFound(f"'{model_id}' is not of the form <base model>:<adapter>")
    return base, name


class RegistryLoraServer(LLMServer):
    def _init_multiplex_loader(self, model_downloader_cls: Any = None) -> None:
        mx_config = self._llm_config.multiplex_config()
        experimental = self._llm_config.experimental_configs
        if mx_config is None or REGISTRY_KEY not in experimental:
            super()._init_multiplex_loader(model_downloader_cls)
            return
        registry = AdapterRegistry(experimental[REGISTRY_KEY])
        cache_dir = Path(experimental.get(CACHE_KEY) or "/tmp/llm-serve-adapters")
        ids = itertools.count(1)  # vLLM wants a distinct integer id per adapter in this process

        async def _load_model(lora_model_id: str) -> DiskMultiplexConfig:
            base, name = split_adapter_id(lora_model_id)
            info = await asyncio.to_thread(registry.get, name)
            if info is None or info.base_model_id != base:
                raise AdapterNotFound(f"no adapter '{name}' for '{base}' in {registry.root}")
            path = await asyncio.to_thread(registry.local_path, info, cache_dir)
            return DiskMultiplexConfig(
                model_id=lora_model_id, max_total_tokens=None, local_path=path, lora_assigned_int_id=next(ids)
            )

        self._load_model = serve.multiplexed(max_num_models_per_replica=mx_config.max_num_models_per_replica)(
            _load_model
        )
