"""Prompts: immutable versions (version.py) in a registry with aliases and a lock (registry.py)."""

from llm_serve.prompts.registry import PromptNotFound, PromptRegistry, Resolved, default_prompts_dir
from llm_serve.prompts.version import PromptError, PromptVariablesError, PromptVersion

__all__ = [
    "PromptError",
    "PromptNotFound",
    "PromptRegistry",
    "PromptVariablesError",
    "PromptVersion",
    "Resolved",
    "default_prompts_dir",
]
