"""Trust on the real stack: tenants kept apart, budgets held under a burst, work priced when clients leave.

Against a second router application with API keys (conftest `tenants`) in front of the suite's own
engine, embedder and Milvus; its ledger is its own.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration
QUESTION = "How long is the warranty on the Cirrus 3?"


def chat(model: str, question: str = QUESTION, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 16, **extra}


def rows(tenants, key: str, limit: int = 50) -> list[dict[str, Any]]:
    resp = httpx.get(
        f"{tenants.url}/admin/requests", params={"key": key, "limit": limit}, headers=tenants.headers("admin")
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]


def wait_row(tenants, request_id: str, timeout_s: float = 180) -> dict[str, Any] | None:
    """The ledger row of one request, looked up by its id, once settlement has written it."""
    deadline = time.monotonic() + timeout_s
    while True:
        resp = httpx.get(
            f"{tenants.url}/admin/requests", params={"request_id": request_id}, headers=tenants.headers("admin")
        )
        assert resp.status_code == 200, resp.text
        if resp.json()["data"] or time.monotonic() > deadline:
            return (resp.json()["data"] or [None])[0]
        time.sleep(1)


def test_a_tenant_reaches_no_other_tenants_documents(tenants) -> None:
    with httpx.Client(base_url=tenants.base_url, timeout=300) as http:
        acme = tenants.headers("acme")
        post = http.post
        own = post("/chat/completions", json=chat(tenants.model, rag={"collection": "acme_docs"}), headers=acme)
        assert own.status_code == 200 and own.json()["sources"], own.text
        theirs = chat(tenants.model, rag={"collection": "globex_docs", "include_text": True})
        refused = post("/chat/completions", json=theirs, headers=acme)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "collection_not_allowed"
        assert "E4" not in refused.text and "latches" not in refused.text
        widened = chat("acme-support", rag={"collection": "globex_docs"})
        assert post("/chat/completions", json=widened, headers=acme).status_code == 400
        escape = chat("acme-support", rag={"filter": 'source != "") or ("1" == "1'})
        assert post("/chat/completions", json=escape, headers=acme).json()["error"]["code"] == "invalid_filter"
        alias = post("/chat/completions", json=chat("acme-support", rag={"filter": ""}), headers=acme).json()
        assert all("warranty" in s["source"] for s in alias["sources"]), "the alias filter still holds"
        globex = tenants.headers("globex")
        assert post("/chat/completions", json=chat("acme-support"), headers=globex).status_code == 403
        listed = [m["id"] for m in http.get("/models", headers=acme).json()["data"]]
        # acme's key names the pool and its alias; the routing alias onto the pool comes with the pool
        assert set(listed) == {tenants.model, "acme-support", "gpt-4o-mini", "claude-sonnet-4-5"}, listed
        assert "acme-support" not in [m["id"] for m in http.get("/models", headers=globex).json()["data"]]
        for path in ("/admin/requests", "/admin/usage", "/admin/traces", "/admin/cache"):
            assert httpx.get(tenants.url + path, headers=acme).status_code == 403
        # The exact cache is per tenant: the same greedy question is a miss for the other tenant.
        same = chat(tenants.model, "Name one colour.", temperature=0)
        assert post("/chat/completions", json=same, headers=acme).headers["x-llm-serve-cache"] in ("miss", "hit")
        assert post("/chat/completions", json=same, headers=acme).headers["x-llm-serve-cache"] == "hit"
        assert post("/chat/completions", json=same, headers=globex).headers["x-llm-serve-cache"] == "miss"


async def test_a_burst_never_spends_past_the_budget(tenants) -> None:
    headers = tenants.headers("burst")
    async with httpx.AsyncClient(base_url=tenants.base_url, timeout=300) as http:
        burst = await asyncio.gather(
            *(
                http.post("/chat/completions", json=chat(tenants.model, max_tokens=8), headers=headers)
                for _ in range(16)
            )
        )
    statuses = sorted(r.status_code for r in burst)
    assert statuses.count(200) >= 1 and set(statuses) <= {200, 429}, statuses
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in burst if r.status_code == 429)
    spent = sum(r["cost_usd"] for r in rows(tenants, "burst", 100))
    assert 0 < spent <= 0.03, f"spent ${spent:.4f} of a $0.03 budget"


def test_work_a_client_leaves_behind_is_priced(tenants) -> None:
    run = uuid.uuid4().hex[:8]  # the test home outlives runs: ids of this run only
    left_json, left_stream = f"itest-left-json-{run}", f"itest-left-stream-{run}"
    headers = {**tenants.headers("acme"), "x-request-id": left_json}
    long = chat(tenants.model, "Write a story about a lighthouse keeper.", max_tokens=120, temperature=0.7)
    long["ignore_eos"] = True  # exactly 120 tokens: the billed count can be checked
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{tenants.base_url}/chat/completions", json=long, headers=headers, timeout=1.0)
    headers = {**tenants.headers("acme"), "x-request-id": left_stream}
    with httpx.stream(
        "POST", f"{tenants.base_url}/chat/completions", json={**long, "stream": True}, headers=headers, timeout=300
    ) as resp:
        chunks = 0
        for line in resp.iter_lines():
            chunks += line.startswith("data: {")
            if chunks >= 4:
                break

    found = {request_id: wait_row(tenants, request_id) for request_id in (left_json, left_stream)}
    for request_id in (left_json, left_stream):
        row = found[request_id]
        assert row is not None, f"no ledger row for {request_id}"
        assert row["status"] == 499 and row["completion_tokens"] > 0 and row["cost_usd"] > 0, row
        assert "estimated" not in (row["error"] or ""), row
    assert found[left_json]["completion_tokens"] == 120, "the answer the engine finished is billed"
