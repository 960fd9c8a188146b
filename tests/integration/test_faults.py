"""Faults on the real stack: a locked ledger, the state actor killed, an engine replica killed, Milvus gone.

These break the suite's shared stack on purpose, so they run after every other test (tests/conftest.py)
and in this order, the engine last but one and Milvus last. Each process is found by its Ray actor's
class name and killed by its pid: only processes this suite's own `llm-serve up` started.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from llm_serve import local_cluster as lc
from llm_serve.config import load_config

pytestmark = [pytest.mark.integration, pytest.mark.destructive]
CONFIG = load_config(Path(__file__).with_name("config.yaml"))
RECOVERY_TIMEOUT_S = 900


def replica_pid(stack, app: str, deployment: str) -> int:
    pids = lc.replica_pids(stack.config, app, deployment)
    assert pids, f"no live replica of {app}/{deployment}"
    return pids[0]


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 4, **extra}


def request_ids(tenants, key: str) -> set[str]:
    resp = httpx.get(
        f"{tenants.url}/admin/requests", params={"key": key, "limit": 500}, headers=tenants.headers("admin"), timeout=60
    )
    return {r["request_id"] for r in resp.json()["data"]} if resp.status_code == 200 else set()


def test_a_locked_ledger_database_delays_rows_and_serving_goes_on(tenants) -> None:
    lock = sqlite3.connect(tenants.ledger, timeout=30, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    run = uuid.uuid4().hex[:8]  # the test home (and its ledger) outlives runs: ids of this run only
    ids = [f"itest-locked-{run}-{i}" for i in range(4)]
    try:
        for request_id in ids:
            started = time.monotonic()
            resp = httpx.post(
                f"{tenants.base_url}/chat/completions",
                json=chat(tenants.model),
                headers={**tenants.headers("acme"), "x-request-id": request_id},
                timeout=120,
            )
            assert resp.status_code == 200 and time.monotonic() - started < 60
        time.sleep(3)  # the writer retries meanwhile
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    deadline = time.monotonic() + 60
    while not set(ids) <= request_ids(tenants, "acme"):
        assert time.monotonic() < deadline, "rows written while the ledger was locked never landed"
        time.sleep(1)


def test_killing_the_state_actor_loses_no_row_and_keeps_the_budget(stack, tenants) -> None:
    def spent() -> float:
        resp = httpx.get(
            f"{tenants.url}/admin/usage", params={"period": "total", "key": "burst"}, headers=tenants.headers("admin")
        )
        return sum(r["cost_usd"] for r in resp.json()["data"]) if resp.status_code == 200 else -1.0

    def burst() -> httpx.Response:
        body = chat(tenants.model, max_tokens=8)
        return httpx.post(
            f"{tenants.base_url}/chat/completions", json=body, headers=tenants.headers("burst"), timeout=120
        )

    for _ in range(10):  # spend the budget down until its next worst case no longer fits
        if burst().status_code == 429:
            break
    before = spent()
    os.kill(replica_pid(stack, "tenants", "router-state"), signal.SIGKILL)
    run = uuid.uuid4().hex[:8]
    ids = [f"itest-state-killed-{run}-{i}" for i in range(6)]
    for request_id in ids:
        resp = httpx.post(
            f"{tenants.base_url}/chat/completions",
            json=chat(tenants.model),
            headers={**tenants.headers("acme"), "x-request-id": request_id},
            timeout=120,
        )
        assert resp.status_code == 200, resp.text  # acme has no limits: no admission needed to serve it
    deadline = time.monotonic() + 300
    while not set(ids) <= request_ids(tenants, "acme"):
        assert time.monotonic() < deadline, "rows settled while the state actor was down were lost"
        time.sleep(2)
    assert spent() == pytest.approx(before), "the restarted state actor knows what the key spent"
    refused = burst()
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota", refused.text


def test_killing_the_engine_replica_fails_fast_then_recovers_without_a_restart(stack, providers) -> None:
    outcomes: list[tuple[float, float, int]] = []  # (sent at, seconds taken, status)
    # The provider router's requests for the same model, which falls back to an API pool (vLLM's own server).
    routed: list[tuple[float, float, int, str]] = []  # (sent at, seconds taken, status, pool that answered)
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(timeout=300) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    status = http.post(f"{stack.base_url}/chat/completions", json=chat(stack.model)).status_code
                except httpx.HTTPError:
                    status = 0
                outcomes.append((sent, time.monotonic() - sent, status))
                time.sleep(0.5)

    def provider_client() -> None:
        with httpx.Client(timeout=300) as http:
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    resp = http.post(f"{providers.base_url}/chat/completions", json=chat(providers.model))
                    status, pool = resp.status_code, resp.headers.get("x-llm-serve-model", "")
                except httpx.HTTPError:
                    status, pool = 0, ""
                routed.append((sent, time.monotonic() - sent, status, pool))
                time.sleep(0.5)

    workers = [threading.Thread(target=client, daemon=True) for _ in range(3)]
    workers.append(threading.Thread(target=provider_client, daemon=True))
    for worker in workers:
        worker.start()
    # The pid first: the lookup takes seconds, and the clock must start at the kill itself.
    pid = replica_pid(stack, CONFIG.app_name, "engine-smollm2-135m-instruct")
    time.sleep(5)
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed_at + RECOVERY_TIMEOUT_S

    def recovered() -> list[float]:
        # Answers that ended a second or more after the kill came from the new replica: either after fast
        # 503s, or (when the replica is back within the router's wait) the requests in flight just waited.
        return [t + d for t, d, s in outcomes if s == 200 and t + d >= killed_at + 1]

    while not recovered():
        assert time.monotonic() < deadline, "the pool never answered again"
        time.sleep(2)
    recovered_at = min(recovered())
    # The provider router's own breaker for the engine closes at its next probe: answers from the engine again.
    while not [r for r in routed if r[0] > recovered_at and r[3] == stack.model]:
        assert time.monotonic() < deadline, "the provider router never went back to the engine pool"
        time.sleep(1)
    stop.set()
    for worker in workers:
        worker.join(310)
    assert replica_pid(stack, CONFIG.app_name, "engine-smollm2-135m-instruct") != pid, "the replica was replaced"
    around = [(d, s) for t, d, s in outcomes if t + d >= killed_at]  # in flight at the kill, or sent after it
    failures = [(d, s) for d, s in around if s != 200]
    print(f"engine killed: {len(failures)} failed, recovered after {recovered_at - killed_at:.0f} s")
    assert all(s == 503 for _, s in failures), failures  # never a 500, never a client-side timeout
    assert all(d < 60 for d, _ in failures), "failures come quickly, not after the client gives up"
    assert max(d for d, _ in around) < 180, "a request waits a bounded time for the new replica"
    during = [(d, s, pool) for t, d, s, pool in routed if t + d >= killed_at and t <= recovered_at]
    print(f"provider router while the engine was down: {len(during)} requests, pools {sorted({p for *_, p in during})}")
    assert all(s == 200 for _, s, _ in during), during  # the API pool answered what the engine could not
    # A provider-router request that lived wholly inside the window in which the engine pool refused requests
    # can only have been answered by the API pool. The window opens at the kill (a refused request may have been
    # sent before it, when the engine still answered) and closes at the last refusal or the first answer from the
    # new replica, whichever is first. On a fast CPU the new replica can be back within the router's wait: then
    # nothing failed and nothing fell back.
    refusals = [(t, t + d) for t, d, s in outcomes if t + d >= killed_at and s != 200]
    if refusals:
        window = (max(killed_at, min(a for a, _ in refusals)), min(recovered_at, max(b for _, b in refusals)))
        inside = [(t, d, pool) for t, d, _, pool in routed if window[0] <= t and t + d <= window[1]]
        engine_answered = [r for r in inside if r[2] != "upstream-gpt"]
        assert not engine_answered, (window, engine_answered)


def test_without_milvus_retrieval_is_503_and_chat_goes_on(stack) -> None:
    state = lc.read_state(stack.config)
    assert state is not None and state.milvus_pid
    lc.stop_tree(state.milvus_pid)
    with httpx.Client(base_url=stack.base_url, timeout=120) as http:
        rag = http.post("/chat/completions", json=chat(stack.model, rag={"collection": "nimbus_manual"}))
        assert rag.status_code == 503 and rag.json()["error"]["code"] == "store_unavailable", rag.text
        assert http.post("/chat/completions", json=chat(stack.model)).status_code == 200
