"""Multi-node on one machine: a head (router, state, proxy) and an "engine" node that advertises a custom
resource the pool asks for, so the engine replica is placed there by resources; the engine node is killed
under load and joins again. Then autoscaling between 1 and 2 replicas under load and idleness.

The application is deployed with `serve deploy` from the Serve config `llm-serve cluster render` generates,
as on KubeRay. The model is the tiny random Llama: only placement, failure and scaling mechanics matter here.
What was seen (times, failures) is printed, and benchmarks/results/ quote the same test's numbers.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from tests.integration.ray_nodes import Cluster, make_cluster
from tests.tiny_model import build_vllm_tiny_llama

pytestmark = pytest.mark.integration
ENGINE = "engine-tiny"
FAILURE_BACKOFF_S = 0.5
REQUEST = {"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "cache": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_vllm_tiny_llama(tmp_path_factory.mktemp("tiny-vllm") / "model")


@pytest.fixture
def short_temp() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="lmn-", dir="/tmp")  # Ray's socket paths have a length limit
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def _load(
    url: str, stop: asyncio.Event, clients: int, log: list[tuple[float, int, float]], request: dict[str, Any] = REQUEST
) -> None:
    """`clients` loops of chat requests until `stop`: (start time, status, seconds) per request."""

    async def one(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            started = time.monotonic()
            try:
                status = (await client.post(f"{url}/v1/chat/completions", json=request)).status_code
            except httpx.HTTPError:
                status = 0  # no answer at all: what the test must never see
            log.append((started, status, time.monotonic() - started))
            if status != 200:
                await asyncio.sleep(FAILURE_BACKOFF_S)  # a client backs off after an error, as SDKs do

    async with httpx.AsyncClient(timeout=90) as client:
        await asyncio.gather(*(one(client) for _ in range(clients)))


def _ledger_rows(cluster: Cluster) -> int:
    engine = sa.create_engine(cluster.config.ledger.database_url(cluster.config.home_path))
    with engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM requests WHERE model = 'tiny'")).scalar_one()
    engine.dispose()
    return int(count)


def _wait_rows(cluster: Cluster, expected: int, timeout_s: float = 60) -> int:
    deadline = time.monotonic() + timeout_s
    while (rows := _ledger_rows(cluster)) < expected and time.monotonic() < deadline:
        time.sleep(1)
    return rows


def test_engine_on_its_node_and_the_loss_of_that_node(model_dir: Path, tmp_path: Path, short_temp: str) -> None:
    cluster = make_cluster(tmp_path, short_temp, model_dir, resources={"engine_node": 1})
    try:
        cluster.start_head()
        engine_node = cluster.add_node(1, num_cpus=2, resources={"engine_node": 1})
        cluster.deploy()
        cluster.wait_ready(600)
        placed = cluster.replica_nodes()
        assert placed[ENGINE] == ["engine_node"], placed
        assert placed["router"] == ["head"] and placed["router-state"] == ["head"], placed
        assert placed["ServeController"] == ["head"], placed

        async def scenario() -> dict[str, Any]:
            log: list[tuple[float, int, float]] = []
            stop = asyncio.Event()
            load = asyncio.create_task(_load(cluster.url, stop, 4, log))
            await asyncio.sleep(8)
            killed_at = time.monotonic()
            cluster.kill(engine_node)
            await asyncio.sleep(15)
            rejoined_at = time.monotonic()
            cluster.add_node(2, num_cpus=2, resources={"engine_node": 1})
            while not any(s == 200 and t > rejoined_at for t, s, _ in log):
                assert time.monotonic() - rejoined_at < 600, "no request succeeded after the node came back"
                await asyncio.sleep(1)
            recovered_at = min(t + d for t, s, d in log if s == 200 and t > rejoined_at)
            await asyncio.sleep(3)
            stop.set()
            await load
            return {"killed_at": killed_at, "rejoined_at": rejoined_at, "recovered_at": recovered_at, "log": log}

        seen = asyncio.run(scenario())
        log = seen["log"]
        killed, rejoined, recovered = seen["killed_at"], seen["rejoined_at"], seen["recovered_at"]
        before = [s for t, s, d in log if t + d < killed]
        after = [s for t, s, _ in log if t > recovered + 2]
        failed = [(t, s, d) for t, s, d in log if s != 200]
        summary = {
            "requests": len(log),
            "ok_before_loss": before.count(200),
            "failed": len(failed),
            "failed_statuses": sorted({s for _, s, _ in failed}),
            "failed_from_loss_s": round(min(t for t, _, _ in failed) - killed, 1) if failed else None,
            "last_failure_after_rejoin_s": round(max(t + d for t, _, d in failed) - rejoined, 1) if failed else None,
            "outage_s": round(recovered - killed, 1),
            "recovery_after_rejoin_s": round(recovered - rejoined, 1),
            "slowest_request_s": round(max(d for _, _, d in log), 1),
        }
        print("node loss:", json.dumps(summary))
        assert before and set(before) == {200}, summary
        assert all(s in (503, 504) for _, s, _ in failed), "failures are OpenAI-shaped 503/504, never a dropped call"
        assert summary["slowest_request_s"] < 90, "no request waits past the router's timeout"
        assert after and set(after) == {200}, "once the replica is back every request succeeds again"
        assert cluster.replica_nodes()[ENGINE] == ["engine_node"]  # rescheduled onto the node that came back
        assert _wait_rows(cluster, len(log)) == len(log), "the ledger has a row for every request, failed or not"
    finally:
        cluster.stop()


# The signal the replica count follows (`autoscaling.signal`), each with what makes it move under the same
# load: 6 clients of 96-token answers against replicas that take 4 requests each. The KV cache is cut to 4
# blocks (512 tokens) so that its use is visible; the batch to 2 sequences so that requests wait in the
# engine's queue. (With 8-token answers the tiny engine is idle most of the time, the proxy and router being
# the bottleneck: the engine's signals then rightly ask for no second replica, and only ongoing requests do.)
LONG = {**REQUEST, "max_tokens": 96, "ignore_eos": True}
SIGNALS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "ongoing_requests": ({"target_ongoing_requests": 1}, {}),
    "kv_cache": ({"signal": "kv_cache", "target_kv_cache_usage": 0.5},
                 {"extra_engine_args": {"num_gpu_blocks_override": 4}}),
    "waiting_requests": ({"signal": "waiting_requests", "target_waiting_requests": 1}, {"max_num_seqs": 2}),
}  # fmt: skip


@pytest.mark.parametrize("signal", list(SIGNALS))
def test_autoscaling_up_under_load_and_down_when_idle(
    signal: str, model_dir: Path, tmp_path: Path, short_temp: str
) -> None:
    target, engine = SIGNALS[signal]
    scaling = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 2, "downscale_delay_s": 10, **target}
    cluster = make_cluster(
        tmp_path,
        short_temp,
        model_dir,
        resources={"engine_node": 1},
        autoscaling=scaling,
        max_ongoing_requests=4,
        engine=engine,
    )
    try:
        cluster.start_head()
        cluster.add_node(1, num_cpus=4, resources={"engine_node": 2})
        cluster.deploy()
        cluster.wait_ready(600)
        assert cluster.replicas(ENGINE) == 1

        async def scenario() -> dict[str, Any]:
            log: list[tuple[float, int, float]] = []
            stop = asyncio.Event()
            started = time.monotonic()
            load = asyncio.create_task(_load(cluster.url, stop, 6, log, LONG))
            decided_s = None  # when the second replica first shows, in any state: the autoscaler's decision
            while (states := await asyncio.to_thread(cluster.replica_states, ENGINE)).get("RUNNING", 0) < 2:
                if decided_s is None and sum(states.values()) >= 2:
                    decided_s = time.monotonic() - started
                assert time.monotonic() - started < 420, "load did not add a replica"
                await asyncio.sleep(1)
            up_s = time.monotonic() - started
            await asyncio.sleep(5)  # traffic on both replicas
            stop.set()
            await load
            idle = time.monotonic()
            while await asyncio.to_thread(cluster.replicas, ENGINE) > 1:
                assert time.monotonic() - idle < 300, "idleness did not remove the replica"
                await asyncio.sleep(2)
            return {"decided_s": decided_s or up_s, "up_s": up_s, "down_s": time.monotonic() - idle, "log": log}

        seen = asyncio.run(scenario())
        log = seen["log"]
        summary = {"signal": signal, "decided_s": round(seen["decided_s"], 1), "scale_up_s": round(seen["up_s"], 1),
                   "scale_down_s": round(seen["down_s"], 1), "requests": len(log),
                   "failed": sum(s != 200 for _, s, _ in log)}  # fmt: skip
        print("autoscaling:", json.dumps(summary))
        assert summary["failed"] == 0, "requests keep flowing while a replica starts"
        # ... and after the scale-down, on the replica that is left
        assert httpx.post(f"{cluster.url}/v1/chat/completions", json=REQUEST, timeout=60).status_code == 200
    finally:
        cluster.stop()
