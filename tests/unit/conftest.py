"""Unit tests never touch the developer's ~/.llm-serve: each test gets a home (ledger, caches) of its own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from llm_serve.config import HOME_ENV

# Module- and session-scoped fixtures (the fuzzers' routers) run before the per-test home below exists:
# they get a home of the session's own, never the developer's.
os.environ[HOME_ENV] = tempfile.mkdtemp(prefix="llm-serve-unit-")


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "llm-serve-home"
    monkeypatch.setenv(HOME_ENV, str(home))
    return home
