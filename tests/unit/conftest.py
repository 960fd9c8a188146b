"""Unit tests never touch the developer's ~/.llm-serve: each test gets a home (ledger, caches) of its own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_serve.config import HOME_ENV


@pytest.fixture(scope="package", autouse=True)
def _package_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Module-scoped fixtures (the fuzzers' routers) are made before the per-test home below exists: they get
    this one. Package-scoped, not set at import: the integration tests in the same session must keep the
    environment they were given (their stack's home and its Ray token)."""
    home = tmp_path_factory.mktemp("llm-serve-unit-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(HOME_ENV, str(home))
        yield home


@pytest.fixture(autouse=True)
def _private_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "llm-serve-home"
    monkeypatch.setenv(HOME_ENV, str(home))
    return home
