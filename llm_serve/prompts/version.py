"""One immutable prompt version (a YAML file), rendered in a sandboxed Jinja2.

The content hash travels with the declared version, so an edit that forgot to bump the version still
shows up as a different prompt in responses and logs (and `prompts.lock` refuses it, see registry.py).
Variables are checked against the version's JSON Schema before rendering, so a caller learns which
variable is wrong instead of getting a half-rendered prompt or a Jinja2 error about an undefined name.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateError
from jinja2.sandbox import SandboxedEnvironment
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

_ENV = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, trim_blocks=True, lstrip_blocks=True)
ROLES = frozenset({"system", "developer", "user", "assistant"})
FIELDS = frozenset({"name", "version", "description", "template", "messages", "variables", "output_schema"})


class PromptError(ValueError):
    """A prompt that cannot be loaded, resolved or rendered; the message names the file, the prompt or
    the variable, on one line."""


class PromptVariablesError(PromptError):
    """Variables that do not match the prompt's `variables` schema.

    `problems` lists every `(param, reason)` found, so a caller fixes them in one go; `param` is the
    first one's path (e.g. `prompt.variables.question`), ready for an OpenAI-style error's `param`.
    """

    def __init__(self, message: str, problems: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.problems = problems
        self.param = problems[0][0] if problems else "prompt.variables"

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions pickle their args only; keep `problems` when one crosses to or from a Ray replica.
        return type(self), (str(self), self.problems)


@functools.lru_cache(maxsize=256)
def _compile(source: str) -> Template:
    """Parse once per distinct template text: replicas render the same few prompts on every request."""
    return _ENV.from_string(source)


def _variable_path(parts: Any) -> str:
    return "prompt.variables" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts)


@dataclass(frozen=True)
class PromptVersion:
    """A parsed version file. Construction validates it, so a bad file fails where it is loaded (on the
    driver), not on the first request that uses it on a replica.

    Exactly one of `template` (rendered to text; as messages it is one user message) and `messages`
    (`{role, content}` pairs, each content a template) is set. `variables_schema` None means the
    prompt declares no schema and variables are passed through unchecked (StrictUndefined still
    rejects a missing one at render time).
    """

    name: str
    version: str
    template: str | None = None
    messages: tuple[dict[str, str], ...] | None = None
    variables_schema: dict[str, Any] | None = None
    output_schema: dict[str, Any] | None = None
    description: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "version", str(self.version))  # YAML reads `version: 1` as an int
        label = f"prompt {self.name}@{self.version}"
        if (self.template is None) == (self.messages is None):
            raise PromptError(f"{label}: give either `template` or `messages`, not both or neither")
        if self.messages is not None:
            object.__setattr__(self, "messages", _check_messages(label, self.messages))
        for source in self.sources():
            try:
                _compile(source)
            except TemplateError as exc:
                raise PromptError(f"{label}: template does not parse: {_one_line(exc)}") from None
        if self.variables_schema is not None:
            _check_schema(label, "variables", self.variables_schema)
            if self.variables_schema.get("type") != "object":
                raise PromptError(f"{label}: `variables` must be a JSON Schema with `type: object`")
        if self.output_schema is not None:
            _check_schema(label, "output_schema", self.output_schema)

    def __hash__(self) -> int:
        # The dict fields are unhashable; equal versions have equal content, hence equal hashes.
        return hash((self.name, self.version, self.content_hash))

    def sources(self) -> list[str]:
        """The template strings, in order."""
        if self.template is not None:
            return [self.template]
        return [m["content"] for m in self.messages or ()]

    @functools.cached_property
    def content_hash(self) -> str:
        """sha256 (12 hex) of a canonical JSON of what changes the model's input or the answer's contract;
        the description is left out so rewording it is not a new prompt."""
        content = {
            "template": self.template,
            "messages": list(self.messages) if self.messages is not None else None,
            "variables": self.variables_schema,
            "output_schema": self.output_schema,
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        """`name@version+hash`: what responses and logs report."""
        return f"{self.name}@{self.version}+{self.content_hash}"

    def validate_variables(self, variables: Mapping[str, Any]) -> dict[str, Any]:
        """The variables with schema defaults filled in; raises PromptVariablesError naming every problem."""
        if not isinstance(variables, Mapping):
            raise PromptVariablesError(
                f"prompt {self.ref}: variables must be an object", [("prompt.variables", "not an object")]
            )
        values = dict(variables)
        schema = self.variables_schema
        if schema is None:
            return values
        for key, spec in (schema.get("properties") or {}).items():
            if key not in values and isinstance(spec, Mapping) and "default" in spec:
                values[key] = copy.deepcopy(spec["default"])
        problems = _problems(schema, values)
        if problems:
            listed = "; ".join(f"{param}: {reason}" for param, reason in problems)
            raise PromptVariablesError(f"prompt {self.ref}: invalid variables: {listed}", problems)
        return values

    def render_messages(self, variables: Mapping[str, Any] | None = None) -> list[dict[str, str]]:
        """Chat messages; a `template` prompt becomes one user message."""
        values = self.validate_variables(variables or {})
        if self.template is not None:
            return [{"role": "user", "content": self._render(self.template, values)}]
        return [{"role": m["role"], "content": self._render(m["content"], values)} for m in self.messages or ()]

    def render(self, **variables: Any) -> str:
        """The text of a `template` prompt (a system prompt, say); `messages` prompts use render_messages."""
        if self.template is None:
            raise PromptError(f"prompt {self.ref} is a list of messages: use render_messages()")
        return self._render(self.template, self.validate_variables(variables))

    def _render(self, source: str, values: Mapping[str, Any]) -> str:
        try:
            return _compile(source).render(**values).strip()
        except Exception as exc:  # a template can fail any way its expressions can (1/0, a bad filter argument)
            raise PromptError(f"prompt {self.ref}: {type(exc).__name__}: {_one_line(exc)}") from None

    def to_dict(self) -> dict[str, Any]:
        """Plain data in the file's own layout, so it pickles to replicas and `from_dict` reads it back."""
        data: dict[str, Any] = {"name": self.name, "version": self.version}
        if self.description:
            data["description"] = self.description
        if self.variables_schema is not None:
            data["variables"] = copy.deepcopy(self.variables_schema)
        if self.output_schema is not None:
            data["output_schema"] = copy.deepcopy(self.output_schema)
        if self.template is not None:
            data["template"] = self.template
        else:
            data["messages"] = [dict(m) for m in self.messages or ()]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptVersion:
        """Build from a version file's mapping (YAML int versions become strings)."""
        if not isinstance(data, Mapping):
            raise PromptError("a prompt must be a mapping with name, version and template or messages")
        missing = [k for k in ("name", "version") if data.get(k) in (None, "")]
        if "template" not in data and "messages" not in data:
            missing.append("template or messages")
        if missing:
            raise PromptError(f"prompt lacks {', '.join(missing)}")
        unknown = sorted(set(data) - FIELDS)
        if unknown:
            raise PromptError(f"prompt {data['name']}@{data['version']}: unknown field(s) {', '.join(unknown)}")
        template = data.get("template")
        if template is not None and not isinstance(template, str):
            raise PromptError(f"prompt {data['name']}@{data['version']}: `template` must be a string")
        messages = data.get("messages")
        return cls(
            name=str(data["name"]),
            version=str(data["version"]),
            template=template,
            messages=tuple(messages) if isinstance(messages, list) else messages,
            variables_schema=data.get("variables"),
            output_schema=data.get("output_schema"),
            description=str(data.get("description") or ""),
        )

    @classmethod
    def load(cls, path: str | Path) -> PromptVersion:
        """One version file on its own (the registry adds the directory/name and stem/version checks)."""
        file = Path(path)
        try:
            data = yaml.safe_load(file.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise PromptError(f"cannot read prompt file {file}: {_one_line(exc)}") from None
        try:
            return cls.from_dict(data)
        except PromptError as exc:
            raise PromptError(f"prompt file {file}: {exc}") from None


def _check_messages(label: str, messages: Any) -> tuple[dict[str, str], ...]:
    if not isinstance(messages, tuple | list) or not messages:
        raise PromptError(f"{label}: `messages` must be a non-empty list of {{role, content}}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise PromptError(f"{label}: messages[{i}] must have exactly `role` and `content`")
        if message["role"] not in ROLES or not isinstance(message["content"], str):
            raise PromptError(f"{label}: messages[{i}] needs a role in {sorted(ROLES)} and a string content")
        checked.append({"role": message["role"], "content": message["content"]})
    return tuple(checked)


def _check_schema(label: str, field: str, schema: Any) -> None:
    if not isinstance(schema, Mapping):
        raise PromptError(f"{label}: `{field}` must be a JSON Schema object")
    try:
        Draft202012Validator.check_schema(schema)
    except SchemaError as exc:
        raise PromptError(f"{label}: `{field}` is not a valid JSON Schema: {_one_line(exc.message)}") from None


def _problems(schema: Mapping[str, Any], values: dict[str, Any]) -> list[tuple[str, str]]:
    """Every `(param, reason)`, with `required` and `additionalProperties` split per variable so that each
    missing or unexpected one is named by its own path."""
    found: list[tuple[str, str]] = []
    for error in Draft202012Validator(schema).iter_errors(values):
        path = _variable_path(error.absolute_path)
        instance = error.instance if isinstance(error.instance, Mapping) else {}
        if error.validator == "required":
            found += [(f"{path}.{k}", "missing (required)") for k in error.validator_value if k not in instance]
        elif error.validator == "additionalProperties" and error.validator_value is False:
            declared = error.schema.get("properties") or {}
            patterns = list((error.schema.get("patternProperties") or {}).keys())
            extra = [k for k in instance if k not in declared and not any(re.search(p, k) for p in patterns)]
            found += [(f"{path}.{k}", "unexpected (the prompt declares no such variable)") for k in extra]
        else:
            found.append((path, _one_line(error.message)))
    return sorted(dict.fromkeys(found), key=lambda problem: problem[0])  # deterministic: by variable path


def _one_line(text: Any) -> str:
    return " ".join(str(text).split())
