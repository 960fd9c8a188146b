"""Health routes and `llm-serve status` against the running stack."""

from __future__ import annotations

import httpx
import pytest

pytestmark = pytest.mark.integration


def test_health_and_ready(stack) -> None:
    assert httpx.get(f"{stack.url}/healthz", timeout=30).json() == {"status": "ok"}
    ready = httpx.get(f"{stack.url}/readyz", timeout=30)
    assert ready.status_code == 200
    pools = {m.id: "ready" for m in stack.config.engine_models}
    assert ready.json()["models"] == {**pools, "all-minilm-l6-v2": "ready"}
    assert len(pools) == 2  # the bf16 pool and its W8A8 sibling (test_quantized.py)


def test_status_reports_ready(stack) -> None:
    out = stack.cli("status")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "ready (HTTP 200)" in out.stdout
    assert "private Ray: pid" in out.stdout


def test_models_list_shows_the_pulled_models(stack) -> None:
    """Every configured registry model is provisioned and shown with the pool that serves it; a registry model
    no pool uses may be "not pulled"."""
    out = stack.cli("models", "list")
    assert out.returncode == 0
    rows = {line.split()[0]: line.split()[1:3] for line in out.stdout.splitlines()[1:] if line.strip()}
    for model in stack.config.engine_models:
        assert rows[model.source] == ["provisioned", model.id], out.stdout
