"""The first prompt API, kept so existing imports work: a `PromptTemplate` is now a `PromptVersion`.

`PromptTemplate(name, version, template)` and `PromptTemplate.load(path)` behave as before; see
version.py for the file format and registry.py for versions, aliases and the lock.
"""

from __future__ import annotations

from llm_serve.prompts.version import _ENV, PromptError, PromptVariablesError, PromptVersion

PromptTemplate = PromptVersion

__all__ = ["_ENV", "PromptError", "PromptTemplate", "PromptVariablesError"]
