"""Every name llm-serve takes from Ray Serve LLM's private package (`ray.llm._internal`), in one place.

Ray Serve LLM's public API (`ray.serve.llm`) builds deployments but does not expose the classes we
extend or the request helpers we reuse, so these come from `ray.llm._internal`, which may change in
any Ray release. Keeping them here means one file to re-check on an upgrade. They were read and the
test suite run against **Ray 2.60.0** (`CHECKED_RAY_VERSION`); another version logs a warning once.

Names load on first use (PEP 562), so importing this module is cheap: the router, which only needs
`RawRequestInfo` and the chat-request sanitizer, does not pull vLLM's engine classes in.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

logger = logging.getLogger("llm_serve.engine")

CHECKED_RAY_VERSION = "2.60.0"

_NAMES = {
    # The replica class: starts vLLM's AsyncLLM, multiplexes LoRA, serves chat/completions/health.
    "LLMServer": "ray.llm._internal.serve.core.server.llm_server",
    # The engine class LLMServer drives (we pick the executor on CPU, see cpu_engine.py).
    "VLLMEngine": "ray.llm._internal.serve.engines.vllm.vllm_engine",
    # What an adapter loader returns to LLMServer's multiplexing.
    "DiskMultiplexConfig": "ray.llm._internal.serve.core.configs.llm_config",
    # Request headers carried with an engine call (our trace context travels in them).
    "RawRequestInfo": "ray.llm._internal.serve.core.protocol",
    # Materializes pydantic's lazy iterators in chat messages so the request pickles across a handle.
    "sanitize_chat_completion_request": (
        "ray.llm._internal.serve.core.ingress.utils",
        "_sanitize_chat_completion_request",
    ),
}
_warned = False


def _check_version() -> None:
    global _warned
    if _warned:
        return
    _warned = True
    import ray

    if ray.__version__ != CHECKED_RAY_VERSION:
        logger.warning(
            "llm-serve's use of ray.llm._internal was checked against Ray %s; this is Ray %s "
            "(see llm_serve/engine/ray_llm.py)",
            CHECKED_RAY_VERSION,
            ray.__version__,
        )


def __getattr__(name: str) -> Any:
    target = _NAMES.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module_name, attr = target if isinstance(target, tuple) else (target, name)
    _check_version()
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value  # later lookups skip __getattr__
    return value


__all__ = sorted(_NAMES)
