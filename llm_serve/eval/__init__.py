"""Offline evaluation (`llm-serve eval`): run a JSONL set through an endpoint and score it with ragas.

Names are resolved lazily (PEP 562) so that the CLI can read `llm_serve.eval.settings` for its
defaults without importing httpx, tqdm or ragas; ragas itself loads only when scoring starts.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "DatasetError": "llm_serve.eval.dataset",
    "EvalRow": "llm_serve.eval.dataset",
    "load_dataset": "llm_serve.eval.dataset",
    "EXIT_FAILED": "llm_serve.eval.runner",
    "EXIT_OK": "llm_serve.eval.runner",
    "EXIT_USAGE": "llm_serve.eval.runner",
    "EvalOutcome": "llm_serve.eval.runner",
    "run_eval": "llm_serve.eval.runner",
    "EvalOptions": "llm_serve.eval.settings",
    "JudgeOptions": "llm_serve.eval.settings",
    "UsageError": "llm_serve.eval.variants",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
