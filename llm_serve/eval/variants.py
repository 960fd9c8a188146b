"""What is being compared: a model (or adapter) id, optionally with a registry prompt.

The primary variant comes from --model/--prompt; every --compare SPEC changes one or both of them,
so "the same model with prompt v2" and "an adapter with the same prompt" are each one short flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ALIAS_PREFIX = "alias:"


class UsageError(ValueError):
    """A mistake in the command line itself: reported in one line, exit code 2."""


@dataclass(frozen=True)
class PromptRef:
    """A registry prompt as the request names it: a pinned version, an alias, or the registry's default."""

    name: str
    version: str | None = None
    alias: str | None = None

    @classmethod
    def parse(cls, ref: str) -> PromptRef:
        """`NAME`, `NAME@VERSION` or `NAME@alias:ALIAS`.

        The alias needs its prefix because the client cannot tell a version from an alias without the
        registry, and guessing wrong would evaluate a different prompt than the one asked for.
        """
        name, at, tag = ref.strip().partition("@")
        if not name or (at and not tag):
            raise UsageError(f"bad prompt reference {ref!r}: expected NAME, NAME@VERSION or NAME@alias:ALIAS")
        if tag.startswith(ALIAS_PREFIX):
            alias = tag[len(ALIAS_PREFIX) :]
            if not alias:
                raise UsageError(f"bad prompt reference {ref!r}: the alias name is missing")
            return cls(name, alias=alias)
        return cls(name, version=tag or None)

    @property
    def ref(self) -> str:
        if self.alias:
            return f"{self.name}@{ALIAS_PREFIX}{self.alias}"
        return f"{self.name}@{self.version}" if self.version else self.name

    def payload(self, variables: dict[str, Any]) -> dict[str, Any]:
        """The request's `prompt` object (llm-serve's extension of the chat API)."""
        out: dict[str, Any] = {"name": self.name, "variables": variables}
        if self.version:
            out["version"] = self.version
        if self.alias:
            out["alias"] = self.alias
        return out


@dataclass(frozen=True)
class Variant:
    """One column of the comparison."""

    model: str
    prompt: PromptRef | None = None

    @property
    def label(self) -> str:
        return f"{self.model} [{self.prompt.ref}]" if self.prompt else self.model

    def as_dict(self) -> dict[str, Any]:
        return {"label": self.label, "model": self.model, "prompt": self.prompt.ref if self.prompt else None}


def parse_compare(spec: str, primary: Variant) -> Variant:
    """`model=M`, `prompt=NAME@V`, both joined by a comma, or a bare model id (`base:adapter` included).

    What a spec does not mention is the primary's, so a spec changes exactly what it names; `prompt=`
    with nothing after it drops the prompt (plain chat against the same model).
    """
    spec = spec.strip()
    if not spec:
        raise UsageError("empty --compare spec")
    if "=" not in spec:
        return Variant(model=spec, prompt=primary.prompt)
    model, prompt = primary.model, primary.prompt
    for part in spec.split(","):
        key, eq, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or key not in ("model", "prompt"):
            raise UsageError(
                f"bad --compare spec {spec!r}: expected model=M, prompt=NAME@V (comma-joined) or a model id"
            )
        if key == "model":
            if not value:
                raise UsageError(f"bad --compare spec {spec!r}: model= needs a model id")
            model = value
        else:
            prompt = PromptRef.parse(value) if value else None
    return Variant(model=model, prompt=prompt)


def build_variants(model: str, prompt: str | None, compare: list[str]) -> list[Variant]:
    """The primary first, then each --compare in order; duplicates are refused (they would only cost time)."""
    primary = Variant(model=model, prompt=PromptRef.parse(prompt) if prompt else None)
    variants = [primary]
    for spec in compare:
        variant = parse_compare(spec, primary)
        if variant in variants:
            raise UsageError(f"--compare {spec!r} is the same variant as {variant.label!r}")
        variants.append(variant)
    return variants
