"""A versioned prompt file (YAML: name, version, template) rendered in a sandboxed Jinja2.

The template's content hash travels with its declared version, so an edit that forgot to bump the
version still shows up as a different prompt in responses and logs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, TemplateError
from jinja2.sandbox import SandboxedEnvironment

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)


class PromptError(ValueError):
    """A prompt file that cannot be loaded or rendered; the message names the file or the variable."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: str
    template: str

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        """`name@version+hash`: what responses and logs report."""
        return f"{self.name}@{self.version}+{self.content_hash}"

    def render(self, **variables: Any) -> str:
        try:
            return _ENV.from_string(self.template).render(**variables).strip()
        except TemplateError as exc:
            raise PromptError(f"prompt {self.ref}: {exc}") from None

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "template": self.template}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptTemplate:
        return cls(name=str(data["name"]), version=str(data["version"]), template=str(data["template"]))

    @classmethod
    def load(cls, path: str | Path) -> PromptTemplate:
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PromptError(f"cannot read prompt file {file}: {exc}") from None
        missing = [k for k in ("name", "version", "template") if not isinstance(data, dict) or k not in data]
        if missing:
            raise PromptError(f"prompt file {file} lacks {', '.join(missing)}")
        prompt = cls.from_dict(data)
        try:
            _ENV.parse(prompt.template)
        except TemplateError as exc:
            raise PromptError(f"prompt file {file}: template does not parse: {exc}") from None
        return prompt
