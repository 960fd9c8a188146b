"""Health routes and `llm-serve status` against the running stack."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_health_and_ready(stack) -> None:
    assert httpx.get(f"{stack.url}/healthz", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz", timeout=30)
    assert ready.status_code == 200
    assert ready.json()["models"] == {stack.model: "ready", "all-minilm-l6-v2": "ready"}


def test_status_reports_ready(stack) -> None:
    out = stack.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready (HTTP 200)" in out.stdout
    assert "private Ray: pid" in out.stdout


def test_models_list_shows_the_pulled_model(stack) -> None:
    out = stack.cli("models", "list")
    assert out.returncode == 0
    assert "provisioned" in out.stdout and "not pulled" not in out.stdout
