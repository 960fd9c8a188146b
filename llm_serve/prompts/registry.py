"""The prompt registry: `<dir>/<name>/<version>.yaml`, `<dir>/<name>/aliases.yaml`, `<dir>/prompts.lock`.

Versions are immutable so that a `name@version` seen in a log or an eval report means one text forever:
`prompts.lock` records each version's content hash and loading refuses a version whose content no longer
matches it. Shipping a change is adding a version and moving an alias (`production`, `staging`, or a
weighted A/B split), which callers resolve at request time.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llm_serve.prompts.version import PromptError, PromptVersion

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ALIASES_FILE = "aliases.yaml"
LOCK_FILE = "prompts.lock"
DEFAULT_ALIAS = "production"

Aliases = dict[str, dict[str, float]]  # alias -> {version: normalised weight}; a plain alias is {version: 1.0}


class PromptNotFound(PromptError):
    """An unknown prompt name, version or alias. `kind` is what was looked up ("prompt", "version",
    "alias" or "version or alias"), `missing` the value asked for and `available` what exists instead."""

    def __init__(self, message: str, kind: str, missing: str, available: list[str]) -> None:
        super().__init__(message)
        self.kind, self.missing, self.available = kind, missing, available

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (str(self), self.kind, self.missing, self.available)


@dataclass(frozen=True)
class Resolved:
    """A resolution's result: the version, and the alias that chose it (None when a version was asked for
    or the registry fell back to the highest version), for logging which arm a request got."""

    prompt: PromptVersion
    alias: str | None = None

    @property
    def ref(self) -> str:
        return self.prompt.ref


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order, so that version 10 sorts after 9."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def default_prompts_dir() -> Path:
    """`configs/prompts` under the working directory when there is one (a project of one's own), else the
    one shipped with llm-serve."""
    local = Path("configs/prompts")
    return local if local.is_dir() else PROJECT_ROOT / "configs" / "prompts"


class PromptRegistry:
    """All versions and aliases of all prompts; plain data (`to_dict`) so it can ship to Serve replicas."""

    def __init__(
        self,
        prompts: Mapping[str, Mapping[str, PromptVersion]],
        aliases: Mapping[str, Aliases] | None = None,
        paths: Mapping[str, Path] | None = None,
    ) -> None:
        self._prompts = {name: dict(versions) for name, versions in prompts.items()}
        self._aliases: dict[str, Aliases] = {}
        self._paths = dict(paths or {})  # "name@version" (and "name" for aliases) -> file, for messages and diffs
        for name, table in (aliases or {}).items():
            self._aliases[name] = {a: _check_alias(self, name, a, spec) for a, spec in table.items()}

    # ---- loading ------------------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: str | Path, *, check_lock: bool = True) -> PromptRegistry:
        """Read every prompt under `directory`; with `check_lock`, refuse versions edited after locking."""
        root = Path(directory)
        if not root.is_dir():
            raise PromptError(f"prompts directory {root} does not exist")
        prompts: dict[str, dict[str, PromptVersion]] = {}
        aliases: dict[str, Aliases] = {}
        paths: dict[str, Path] = {}
        for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
            versions = {}
            for file in sorted(folder.glob("*.yaml")):
                if file.name == ALIASES_FILE:
                    continue
                prompt = _load_version(file, folder.name)
                versions[prompt.version] = prompt
                paths[f"{prompt.name}@{prompt.version}"] = file
            if not versions:
                raise PromptError(f"prompt directory {folder} has no <version>.yaml file")
            prompts[folder.name] = versions
            alias_file = folder / ALIASES_FILE
            if alias_file.exists():
                aliases[folder.name] = _read_mapping(alias_file)
                paths[folder.name] = alias_file
        registry = cls(prompts, aliases, paths)
        if check_lock:
            registry.check_lock(read_lock(root))
        return registry

    def check_lock(self, lock: Mapping[str, str]) -> None:
        """Refuse a locked version whose content changed; unlocked (new) versions pass."""
        for key, prompt in self._each():
            if key in lock and lock[key] != prompt.content_hash:
                where = self._paths.get(key, key)
                raise PromptError(
                    f"{where}: {key} changed after it was locked (hash {lock[key]}, now {prompt.content_hash}); "
                    f"versions are immutable: restore it and add a new version file instead"
                )

    # ---- lookup -------------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._prompts)

    def versions(self, name: str) -> list[str]:
        """Oldest first (natural order)."""
        return sorted(self._versions_of(name), key=version_key)

    def aliases(self, name: str) -> Aliases:
        self._versions_of(name)
        return {alias: dict(arms) for alias, arms in self._aliases.get(name, {}).items()}

    def get(self, name: str, version: str) -> PromptVersion:
        versions = self._versions_of(name)
        if str(version) not in versions:
            raise PromptNotFound(
                f"prompt {name!r} has no version {version!r} (versions: {', '.join(self.versions(name))})",
                "version",
                str(version),
                self.versions(name),
            )
        return versions[str(version)]

    def path_of(self, name: str, version: str) -> Path | None:
        """The version's file, when the registry was loaded from a directory."""
        return self._paths.get(f"{name}@{version}")

    def resolve(
        self, name: str, version: str | None = None, alias: str | None = None, sticky_key: str | None = None
    ) -> Resolved:
        """`version` if given; else `alias`; else the `production` alias if defined; else the highest version.

        A weighted alias draws with `random.random()`, or, given `sticky_key` (an API key name, the
        request's `user`), from a hash of (name, alias, sticky_key), so one user stays on one arm.
        """
        if version is not None:
            return Resolved(self.get(name, version))
        table = self._aliases.get(name, {})
        if alias is None:
            if DEFAULT_ALIAS not in table:
                return Resolved(self.get(name, self.versions(name)[-1]))
            alias = DEFAULT_ALIAS
        if alias not in table:
            self._versions_of(name)
            known = sorted(table)
            raise PromptNotFound(
                f"prompt {name!r} has no alias {alias!r} "
                f"({'aliases: ' + ', '.join(known) if known else 'it has no aliases'})",
                "alias",
                alias,
                known,
            )
        return Resolved(self.get(name, _pick(table[alias], name, alias, sticky_key)), alias)

    def resolve_ref(self, ref: str, sticky_key: str | None = None) -> Resolved:
        """`NAME`, `NAME@VERSION` or `NAME@ALIAS` (alias names may not be version names, so this is unambiguous)."""
        name, _, tag = ref.partition("@")
        if not name or (not tag and "@" in ref):
            raise PromptError(f"bad prompt reference {ref!r}: expected NAME, NAME@VERSION or NAME@ALIAS")
        if not tag:
            return self.resolve(name, sticky_key=sticky_key)
        versions, table = self._versions_of(name), self._aliases.get(name, {})
        if tag in versions:
            return self.resolve(name, version=tag)
        if tag in table:
            return self.resolve(name, alias=tag, sticky_key=sticky_key)
        raise PromptNotFound(
            f"prompt {name!r} has no version or alias {tag!r} (versions: {', '.join(self.versions(name))}; "
            f"aliases: {', '.join(sorted(table)) or 'none'})",
            "version or alias",
            tag,
            self.versions(name) + sorted(table),
        )

    def _versions_of(self, name: str) -> dict[str, PromptVersion]:
        if name not in self._prompts:
            raise PromptNotFound(
                f"unknown prompt {name!r} (prompts: {', '.join(self.names()) or 'none'})", "prompt", name, self.names()
            )
        return self._prompts[name]

    def _each(self) -> list[tuple[str, PromptVersion]]:
        return [(f"{n}@{v}", self._prompts[n][v]) for n in self.names() for v in self.versions(n)]

    # ---- shipping -----------------------------------------------------------------------------------

    def lock_entries(self) -> dict[str, str]:
        """`{"name@version": content_hash}` for every version."""
        return {key: prompt.content_hash for key, prompt in self._each()}

    def to_dict(self) -> dict[str, Any]:
        return {
            name: {
                "versions": [self._prompts[name][v].to_dict() for v in self.versions(name)],
                "aliases": self.aliases(name),
            }
            for name in self.names()
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptRegistry:
        prompts = {
            name: {p.version: p for p in map(PromptVersion.from_dict, entry["versions"])}
            for name, entry in data.items()
        }
        return cls(prompts, {name: entry.get("aliases") or {} for name, entry in data.items()})


# ---- files ----------------------------------------------------------------------------------------------


def read_lock(directory: str | Path) -> dict[str, str]:
    file = Path(directory) / LOCK_FILE
    if not file.exists():
        return {}
    data = _read_mapping(file)
    if not all(isinstance(v, str) for v in data.values()):
        raise PromptError(f'{file}: expected a mapping of "name@version" to content hash')
    return {str(k): v for k, v in data.items()}


def write_lock(directory: str | Path) -> tuple[Path, list[str]]:
    """Lock every version (existing entries are kept); returns the file and the newly locked versions.

    Loading checks the lock first, so a changed locked version is refused here rather than re-locked.
    """
    root = Path(directory)
    registry = PromptRegistry.load(root)
    lock = read_lock(root)
    added = [key for key in registry.lock_entries() if key not in lock]
    merged = {**lock, **registry.lock_entries()}
    file = root / LOCK_FILE
    file.write_text(json.dumps(dict(sorted(merged.items())), indent=2) + "\n")
    return file, added


def _load_version(file: Path, folder_name: str) -> PromptVersion:
    prompt = PromptVersion.load(file)
    if prompt.name != folder_name:
        raise PromptError(f"prompt file {file}: name {prompt.name!r} differs from its directory {folder_name!r}")
    if prompt.version != file.stem:
        raise PromptError(f"prompt file {file}: version {prompt.version!r} differs from the file name {file.name!r}")
    return prompt


def _read_mapping(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise PromptError(f"cannot read {file}: {' '.join(str(exc).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise PromptError(f"{file}: expected a mapping")
    return data


def _check_alias(registry: PromptRegistry, name: str, alias: Any, spec: Any) -> dict[str, float]:
    """Normalise `version` or `{version: weight}` to `{version: share}`, checking every version exists."""
    where = registry._paths.get(name, f"prompt {name!r}")
    versions = registry._versions_of(name)
    if not isinstance(alias, str) or not alias or alias in versions:
        raise PromptError(f"{where}: alias {alias!r} must be a non-empty name that is not also a version")
    arms = spec if isinstance(spec, Mapping) else {spec: 1.0}
    if not arms:
        raise PromptError(f"{where}: alias {alias!r} names no version")
    weights: dict[str, float] = {}
    for version, weight in arms.items():
        if str(version) not in versions:
            raise PromptError(
                f"{where}: alias {alias!r} points to version {version!r}, which does not exist "
                f"(versions: {', '.join(registry.versions(name))})"
            )
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
            raise PromptError(f"{where}: alias {alias!r}: weight of version {version!r} must be a positive number")
        weights[str(version)] = float(weight)
    total = sum(weights.values())
    return {v: weights[v] / total for v in sorted(weights, key=version_key)}


def _pick(arms: Mapping[str, float], name: str, alias: str, sticky_key: str | None) -> str:
    if len(arms) == 1:
        return next(iter(arms))
    if sticky_key is None:
        draw = random.random()
    else:
        digest = hashlib.sha256(f"{name}\0{alias}\0{sticky_key}".encode()).digest()
        draw = int.from_bytes(digest[:8], "big") / 2**64
    cumulative = 0.0
    for version, share in arms.items():
        cumulative += share
        if draw < cumulative:
            return version
    return version  # rounding left the draw just above the last boundary
