"""Session-wide test ordering: tests that break parts of the shared stack on purpose run last."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move `destructive` tests (they kill engine replicas, the state actor, Milvus) after everything else,
    so no other test meets a stack that is still recovering."""
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
