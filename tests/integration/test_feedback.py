"""User feedback on the live stack, through the tenant router (keys, its own ledger): tied to the request and
its key, summed in /admin/usage, exported to Prometheus by Ray's metrics agent."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest

from tests.integration.conftest import Tenants

pytestmark = pytest.mark.integration
WAIT_S = 90


def test_feedback_is_counted_per_model_and_key_and_exported(stack, tenants: Tenants) -> None:
    metrics_url = f"http://127.0.0.1:{stack.config.ray.metrics_export_port}/metrics"
    with httpx.Client(base_url=tenants.base_url, timeout=300) as http:
        ids = [f"fb-{uuid.uuid4().hex[:12]}" for _ in range(2)]
        for request_id in ids:
            body = {"model": tenants.model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
            headers = {**tenants.headers("acme"), "x-request-id": request_id}
            assert http.post("/chat/completions", json=body, headers=headers).status_code == 200
        up = {"request_id": ids[0], "rating": "up", "task_completed": True, "score": 5}
        down = {"request_id": ids[1], "rating": "down", "escalated": True}
        first = http.post("/feedback", json=up, headers=tenants.headers("acme"))
        assert first.status_code == 200, first.text
        assert first.json()["model"] == tenants.model and first.json()["rating"] == "up"
        assert http.post("/feedback", json=down, headers=tenants.headers("acme")).status_code == 200
        # Another tenant cannot reach acme's request, nor tell it from one that never existed.
        theirs = http.post("/feedback", json={**up, "rating": "down"}, headers=tenants.headers("globex"))
        assert theirs.status_code == 404 and theirs.json()["error"]["code"] == "request_not_found"
        usage = httpx.get(f"{tenants.url}/admin/usage", params={"key": "acme"}, headers=tenants.headers("admin")).json()
    (row,) = [r for r in usage["feedback"] if r["model"] == tenants.model and r["prompt"] is None]
    assert row["thumbs_up"] >= 1 and row["thumbs_down"] >= 1 and 0 < row["satisfaction"] < 1
    assert row["escalation_reported"] >= 1 and row["task_reported"] >= 1 and row["mean_score"] is not None

    wanted = [
        "ray_llm_serve_feedback_total{",
        'signal="thumbs_up"',
        'signal="escalated"',
        "ray_llm_serve_feedback_score_bucket{",
    ]
    deadline = time.monotonic() + WAIT_S
    missing = wanted
    while missing and time.monotonic() < deadline:
        body = httpx.get(metrics_url, timeout=10).text
        missing = [w for w in wanted if w not in body]
        time.sleep(2)
    assert not missing, f"not exported: {missing}"
