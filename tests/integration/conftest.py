"""One real stack for the whole integration session: `llm-serve up --detach`, then `llm-serve down`.

This goes through the same CLI a user runs, so the model pull (GGUF conversion), the private Ray,
the deployment and the stop-by-PID are exercised too. The llm-serve home for tests is kept between
runs (`.llm-serve-test/` in the checkout, or $LLM_SERVE_TEST_HOME) so the model converts once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_serve.config import load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path(__file__).with_name("config.yaml")
UP_TIMEOUT_S = 1500
CLI = [sys.executable, "-m", "llm_serve.cli", "--config", str(CONFIG)]


@dataclass(frozen=True)
class Stack:
    url: str
    model: str
    env: dict[str, str]

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*CLI, *args], env=self.env, capture_output=True, text=True, timeout=timeout)


def _test_env() -> dict[str, str]:
    home = os.environ.get("LLM_SERVE_TEST_HOME") or str(ROOT / ".llm-serve-test")
    return {**os.environ, "LLM_SERVE_HOME": home, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    env = _test_env()
    config = load_config(CONFIG)
    stack = Stack(url=f"http://127.0.0.1:{config.server.port}", model=config.models[0].id, env=env)
    stack.cli("down")  # leftovers of an interrupted earlier run
    up = subprocess.run(
        [*CLI, "up", "--detach"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=UP_TIMEOUT_S,
    )
    sys.stderr.write(up.stdout[-4000:])
    if up.returncode != 0:
        stack.cli("down")
        pytest.fail(f"`llm-serve up` failed ({up.returncode}):\n{up.stdout[-6000:]}")
    try:
        yield stack
    finally:
        down = stack.cli("down", timeout=180)
        sys.stderr.write(down.stdout + down.stderr)


@pytest.fixture(scope="session")
def client(stack: Stack):
    import openai

    return openai.OpenAI(base_url=stack.base_url, api_key="not-needed", timeout=300, max_retries=0)


@pytest.fixture(scope="session")
def aclient(stack: Stack):
    import openai

    return openai.AsyncOpenAI(base_url=stack.base_url, api_key="not-needed", timeout=300, max_retries=0)
