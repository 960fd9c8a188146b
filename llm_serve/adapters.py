"""The adapter registry: where finished training jobs publish LoRA adapters and engines load them.

A registry is a directory tree, locally (`<home>/adapters` by default) or on any filesystem
pyarrow speaks (`s3://bucket/adapters`, `gs://...`): one folder per adapter name holding the PEFT
files and `llm_serve_adapter.json` (base model, dataset hash, training config, metrics, job id,
time). The metadata file is written last, so a half-copied adapter is never listed; a local
publish swaps the folder in with one rename.
"""

from __future__ import annotations

import json
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METADATA_FILE = "llm_serve_adapter.json"


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    base_model_id: str
    path: str  # inside the registry's filesystem
    metadata: dict[str, Any]

    @property
    def model_id(self) -> str:
        return f"{self.base_model_id}:{self.name}"


def _is_uri(root: str) -> bool:
    return "://" in root and not root.startswith("file://")


class AdapterRegistry:
    def __init__(self, root: str | Path) -> None:
        self.root = str(root).removeprefix("file://")
        self.remote = _is_uri(self.root)
        if self.remote:
            from pyarrow import fs

            self.fs, self.base = fs.FileSystem.from_uri(self.root)
        else:
            self.fs = None
            self.base = str(Path(self.root).expanduser())

    # ---- reading --------------------------------------------------------------------------------

    def list(self) -> list[AdapterInfo]:
        out = []
        for name in sorted(self._names()):
            info = self.get(name)
            if info is not None:
                out.append(info)
        return out

    def get(self, name: str) -> AdapterInfo | None:
        path = f"{self.base}/{name}"
        raw = self._read(f"{path}/{METADATA_FILE}")
        if raw is None:
            return None
        try:
            metadata = json.loads(raw)
        except ValueError:
            return None
        return AdapterInfo(
            name=name, base_model_id=str(metadata.get("base_model_id", "")), path=path, metadata=metadata
        )

    def local_path(self, info: AdapterInfo, cache_dir: str | Path) -> str:
        """A local directory with the adapter's files (a download for remote registries, kept per version)."""
        if not self.remote:
            return info.path
        from pyarrow import fs

        stamp = str(info.metadata.get("created_at", "0")).replace(":", "-")
        target = Path(cache_dir).expanduser() / f"{info.name}-{stamp}"
        if not (target / METADATA_FILE).exists():
            partial = target.with_name(target.name + f".part-{uuid.uuid4().hex[:6]}")
            fs.copy_files(
                info.path, str(partial), source_filesystem=self.fs, destination_filesystem=fs.LocalFileSystem()
            )
            try:
                partial.rename(target)
            except OSError:  # another replica on this node finished the same download first
                shutil.rmtree(partial, ignore_errors=True)
                if not (target / METADATA_FILE).exists():
                    raise
        return str(target)

    def _names(self) -> list[str]:
        if not self.remote:
            base = Path(self.base)
            return (
                [p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")] if base.is_dir() else []
            )
        from pyarrow import fs

        try:
            entries = self.fs.get_file_info(fs.FileSelector(self.base, allow_not_found=True))
        except OSError:
            return []
        return [e.base_name for e in entries if e.type == fs.FileType.Directory and not e.base_name.startswith(".")]

    def _read(self, path: str) -> str | None:
        if not self.remote:
            file = Path(path)
            return file.read_text() if file.is_file() else None
        try:
            with self.fs.open_input_stream(path) as stream:
                return stream.read().decode()
        except (OSError, FileNotFoundError):
            return None

    # ---- writing --------------------------------------------------------------------------------

    def publish(self, adapter_dir: str | Path, name: str, metadata: dict[str, Any]) -> AdapterInfo:
        """Copy a PEFT adapter directory in under `name` (replacing an older one) with its metadata."""
        source = Path(adapter_dir)
        if not (source / "adapter_config.json").is_file():
            raise FileNotFoundError(f"{source} is not a PEFT adapter directory (no adapter_config.json)")
        existing = self.get(name)
        base = metadata.get("base_model_id")
        if existing is not None and base and existing.base_model_id != base:
            # One name, one base model: `<base>:<name>` of the other base would silently vanish.
            raise ValueError(
                f"adapter '{name}' already exists for '{existing.base_model_id}'; choose another adapter_name"
            )
        metadata = {**metadata, "name": name, "created_at": metadata.get("created_at") or _now()}
        if self.remote:
            from pyarrow import fs

            target = f"{self.base}/{name}"
            self.fs.delete_dir_contents(target, missing_dir_ok=True)
            fs.copy_files(str(source), target, source_filesystem=fs.LocalFileSystem(), destination_filesystem=self.fs)
            with self.fs.open_output_stream(f"{target}/{METADATA_FILE}") as out:
                out.write(json.dumps(metadata, indent=2).encode())
        else:
            base = Path(self.base)
            base.mkdir(parents=True, exist_ok=True)
            staging = base / f".staging-{name}-{uuid.uuid4().hex[:8]}"
            shutil.copytree(source, staging)
            (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2))
            target = base / name
            if target.exists():
                retired = base / f".retired-{name}-{uuid.uuid4().hex[:8]}"
                target.rename(retired)
                staging.rename(target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                staging.rename(target)
        info = self.get(name)
        assert info is not None
        return info


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
