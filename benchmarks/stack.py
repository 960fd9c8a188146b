"""The llm-serve stack every benchmark drives: the bench config (its own ports), started and stopped
through the CLI exactly as a user would, optionally with the config patched for one scenario."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from benchmarks.report import BENCH_CONFIG
from llm_serve.config import load_config


class BenchStack:
    name = "llm-serve"

    def __init__(self, env: dict[str, str], patch: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.file = BENCH_CONFIG
        if patch is not None:
            data = yaml.safe_load(BENCH_CONFIG.read_text())
            patch(data)
            self.file = Path(tempfile.mkdtemp()) / BENCH_CONFIG.name
            self.file.write_text(yaml.safe_dump(data))
        self.config = load_config(self.file)
        self.url = f"http://127.0.0.1:{self.config.server.port}"
        self.model = self.config.models[0].id
        self.cli = [sys.executable, "-m", "llm_serve.cli", "--config", str(self.file)]
        self.env = env

    def start(self) -> None:
        """`up --detach`, after a `down` for what an interrupted earlier run may have left."""
        self.stop()
        subprocess.run([*self.cli, "up", "--detach"], env=self.env, check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        subprocess.run([*self.cli, "down"], env=self.env, check=False, capture_output=True)
