"""Turn a configured model source into what vLLM loads: a local directory or a hub id."""

from __future__ import annotations

import importlib
from pathlib import Path

from llm_serve.models.registry import EMBEDDING_PACKAGES, is_registry_model


class ModelNotProvisioned(RuntimeError):
    """A registry model was named but has not been pulled into the llm-serve home yet."""


def model_dir(home: Path, name: str) -> Path:
    return home / "models" / name


def resolve_model_source(source: str, home: Path, *, pull: bool = False) -> str:
    """Return the path or hub id to hand to vLLM for `source`.

    Order: a registry name (pulled into `home` when `pull` is set), then an existing local directory,
    then anything else is taken as a hub id and passed through unchanged, so a cluster with hub
    access can name `HuggingFaceTB/SmolLM2-360M-Instruct` directly.
    """
    if is_registry_model(source):
        from llm_serve.models.provision import is_provisioned, pull_model

        target = model_dir(home, source)
        if is_provisioned(target):
            return str(target)
        if not pull:
            raise ModelNotProvisioned(
                f"model {source!r} is not provisioned under {target}; run `llm-serve models pull {source}`"
            )
        return str(pull_model(source, home))
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ValueError(f"{local} is a directory but not a Hugging Face model (no config.json)")
        return str(local.resolve())
    if source.startswith(("/", "./", "../", "~")):
        raise ValueError(f"model directory {source} does not exist")
    return source


def resolve_embedding_source(source: str) -> str:
    """A packaged embedding model's directory, an existing local directory, or a hub id unchanged."""
    if source in EMBEDDING_PACKAGES:
        module_name = EMBEDDING_PACKAGES[source]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            raise ModelNotProvisioned(
                f"embedding model {source!r} needs the package {source}; install the `rag` extra"
            ) from None
        return str(module.get_model_path())
    local = Path(source).expanduser()
    if local.is_dir():
        return str(local.resolve())
    if source.startswith(("/", "./", "../", "~")):
        raise ValueError(f"embedding model directory {source} does not exist")
    return source
