"""Reliability: what a tenant can reach, what a burst can spend, what goes unpriced, what a fault costs.

Starts the bench stack with API keys (two tenants, each with a collection holding a secret marker
and an alias; a key with a small budget; a capped key for fuzzing; an admin), then measures:

- `fuzz_cases`, `fuzz_5xx`, `fuzz_bad_errors`, `hung_requests`: schemathesis cases (valid and
  negative) from /openapi.json against the live router;
- `cross_tenant_reads`: answers that carried the other tenant's secret, over every path tried
  (collection by name, an alias widened by collection or filter, filter escapes, the exact cache,
  admin routes);
- `overspend_ratio`: spent / budget after a burst of concurrent requests on a small budget;
- `unpriced_engine_tokens`: tokens vLLM generated (its own counter) minus the completion tokens the
  ledger billed to the requests that owned the engine calls, over a mix of finished requests,
  non-streamed requests whose client timed out, streams cut short and shared streams abandoned;
- `lost_requests@<fault>`: answered requests without a ledger row, with the ledger database locked,
  the router-state actor killed, an engine replica killed; `recovery_s@replica_loss`;
  `chat_failures@milvus_down`;
- `accepted_p99_ms@overload_2x`: end-to-end p99 of the accepted requests when twice the load the
  stack sustains is offered, against the p99 at that sustainable load, and how fast the rest are
  refused.

    python benchmarks/reliability.py [--dtype float32] [--fuzz-cases 60]

Writes benchmarks/results/reliability.json (the BENCHMARKS.md shape) and reliability.png.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import re
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.fuzz import FUZZ_LIMITS, fuzz_endpoint
from benchmarks.report import RESULTS, machine, metric, percentile, write_report
from benchmarks.servers import bench_env
from benchmarks.stack import BenchStack
from llm_serve import local_cluster as lc

SCENARIO = "reliability"
# Every request id of a run carries this, so a ledger row left by an earlier run never counts for this one.
RUN = uuid.uuid4().hex[:6]
DETAILS = RESULTS / "raw" / "reliability-details.json"
KEYS = {k: f"sk-bench-{k}" for k in ("acme", "globex", "burst", "fuzz", "admin")}
SECRETS = {"acme": "ACME-MARKER-7341", "globex": "GLOBEX-MARKER-9926"}
BUDGET_USD = 0.03
PRICE = {"input_per_1m": 100.0, "output_per_1m": 200.0}


def _say(message: str) -> None:
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


def patch_for(args: argparse.Namespace):
    def patch(data: dict[str, Any]) -> None:
        model = data["models"][0]
        model["price"] = PRICE
        model["engine"]["engine_metrics"] = True
        if args.dtype != "default":
            model["engine"]["dtype"] = args.dtype
        keys = [
            {"name": "acme", "collections": ["acme_docs"]},
            {"name": "globex", "collections": ["globex_docs"]},
            {"name": "burst", "budget_usd": BUDGET_USD, "budget_period": "total"},
            {"name": "fuzz", "limits": FUZZ_LIMITS, "collections": ["*"]},
            {"name": "admin", "admin": True},
        ]
        data["auth"] = {
            "keys": [{**k, "key_sha256": hashlib.sha256(KEYS[k["name"]].encode()).hexdigest()} for k in keys]
        }
        data.setdefault("rag", {})["aliases"] = [
            {"id": "acme-support", "model": model["id"], "collection": "acme_docs"},
            {"id": "globex-support", "model": model["id"], "collection": "globex_docs"},
        ]
        data.setdefault("router", {})["max_inflight_requests"] = args.max_inflight

    return patch


def auth(name: str, **extra: str) -> dict[str, str]:
    return {"authorization": f"Bearer {KEYS[name]}", **extra}


def chat(model: str, question: str = "Say hi.", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8, **extra}


def ledger_rows(url: str, key: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
    params: dict[str, Any] = {"limit": limit}
    if key:
        params["key"] = key
    resp = httpx.get(f"{url}/admin/requests", params=params, headers=auth("admin"), timeout=120)
    return resp.json()["data"] if resp.status_code == 200 else []


def settled(url: str, ids: set[str], timeout_s: float = 300) -> set[str]:
    """The request ids among `ids` that have a ledger row, waiting up to `timeout_s` for all of them.

    Each id is looked up by itself (`/admin/requests?request_id=`): a phase that also writes a thousand
    fast 503 rows would push its first successes out of any "latest N rows" listing (it did: 15 answered
    requests read as lost)."""
    deadline = time.monotonic() + timeout_s
    found: set[str] = set()
    while True:
        for rid in sorted(ids - found):
            resp = httpx.get(
                f"{url}/admin/requests", params={"request_id": rid, "limit": 1}, headers=auth("admin"), timeout=120
            )
            if resp.status_code == 200 and resp.json()["data"]:
                found.add(rid)
        if found == ids or time.monotonic() > deadline:
            return found
        time.sleep(2)


# ---- tenants ------------------------------------------------------------------------------------


def ingest_tenants(stack: BenchStack) -> None:
    import subprocess

    for tenant, secret in SECRETS.items():
        doc = Path(tempfile.mkdtemp()) / f"{tenant}-policy.md"
        doc.write_text(f"# {tenant} internal policy\n\nThe {tenant} internal discount code is {secret}.\n")
        cmd = [*stack.cli, "ingest", str(doc), "--collection", f"{tenant}_docs"]
        subprocess.run(cmd, env=stack.env, check=True, capture_output=True)


def cross_tenant(url: str, model: str) -> dict[str, Any]:
    """Every way acme's key might read globex's secret; counts the answers that carried it."""
    question = "What is the internal discount code?"
    attempts = [
        ("collection by name", chat(model, question, rag={"collection": "globex_docs", "include_text": True})),
        ("alias widened by collection", chat("acme-support", question, rag={"collection": "globex_docs"})),
        ("other tenant's alias", chat("globex-support", question, rag={"include_text": True})),
        ("filter escape", chat("acme-support", question, rag={"filter": 'doc_id != "") or ("1" == "1'})),
        ("empty filter", chat("acme-support", question, rag={"filter": "", "include_text": True})),
    ]
    reads, tried = 0, []
    with httpx.Client(base_url=url, timeout=300) as http:
        # The exact cache: globex asks first, acme asks the same greedy question after.
        cached = chat(model, question, temperature=0, rag=None)
        http.post("/v1/chat/completions", json=chat("globex-support", question, temperature=0), headers=auth("globex"))
        attempts.append(("exact cache", {**cached, "model": "acme-support"}))
        for name, body in attempts:
            body = {k: v for k, v in body.items() if v is not None}
            resp = http.post("/v1/chat/completions", json=body, headers=auth("acme"))
            leaked = SECRETS["globex"] in resp.text
            reads += leaked
            tried.append({"path": name, "status": resp.status_code, "leaked": leaked})
        for path in ("/admin/requests", "/admin/usage", "/admin/traces", "/admin/cache"):
            resp = http.get(path, headers=auth("acme"))
            leaked = resp.status_code == 200
            reads += leaked
            tried.append({"path": path, "status": resp.status_code, "leaked": leaked})
        listed = [m["id"] for m in http.get("/v1/models", headers=auth("acme")).json()["data"]]
        reads += "globex-support" in listed
        tried.append({"path": "/v1/models", "status": 200, "leaked": "globex-support" in listed})
    own = httpx.post(
        f"{url}/v1/chat/completions",
        json=chat("acme-support", question, rag={"include_text": True}),
        headers=auth("acme"),
        timeout=300,
    )
    return {"reads": reads, "attempts": tried, "own_secret_reached": SECRETS["acme"] in own.text}


# ---- money ------------------------------------------------------------------------------------------


async def burst(url: str, model: str, n: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=300) as http:
        responses = await asyncio.gather(
            *(
                http.post("/v1/chat/completions", json=chat(model, max_tokens=8), headers=auth("burst"))
                for _ in range(n)
            )
        )
    spent = sum(r["cost_usd"] for r in ledger_rows(url, "burst"))
    return {"answered": sum(r.status_code == 200 for r in responses), "spent_usd": spent, "budget_usd": BUDGET_USD}


def engine_generated_tokens(metrics_port: int) -> tuple[float, list[str]]:
    """vLLM's own count of tokens generated, summed over the engine's series on Ray's metrics endpoint,
    and the series names it was read from (so a renamed metric shows as an empty list, not as zero)."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=30).text
    total, names = 0.0, set()
    for line in text.splitlines():
        if line.startswith("#") or "generation_tokens" not in line or "_created" in line:
            continue
        match = re.match(r"^([^{ ]*generation_tokens(_total)?)[{ ]", line)
        if match:
            total += float(line.rsplit(" ", 1)[1])
            names.add(match.group(1))
    return total, sorted(names)


def leave_early(url: str, model: str, tag: str) -> set[str]:
    """Requests whose clients give up: non-streamed ones timed out, streams cut after a few chunks, shared
    greedy streams both readers abandon, and some that finish."""
    ids: set[str] = set()
    long = chat(model, "Write a story about a lighthouse keeper and a storm.", max_tokens=96, temperature=0.8)

    def timed_out(i: int) -> None:
        rid = f"{RUN}-{tag}-json-{i}"
        ids.add(rid)
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(
                f"{url}/v1/chat/completions", json=long, headers=auth("acme", **{"x-request-id": rid}), timeout=1.5
            )

    def cut(i: int, body: dict[str, Any], name: str) -> None:
        rid = f"{RUN}-{tag}-{name}-{i}"
        ids.add(rid)
        headers = auth("acme", **{"x-request-id": rid})
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=300) as resp:
            chunks = 0
            for line in resp.iter_lines():
                chunks += line.startswith("data: {")
                if chunks >= 3 + i:
                    return

    def finished(i: int) -> None:
        rid = f"{RUN}-{tag}-done-{i}"
        ids.add(rid)
        httpx.post(
            f"{url}/v1/chat/completions", json=chat(model), headers=auth("acme", **{"x-request-id": rid}), timeout=300
        )

    shared = {**long, "stream": True, "temperature": 0, "messages": [{"role": "user", "content": "Count slowly."}]}
    threads = [threading.Thread(target=timed_out, args=(i,)) for i in range(4)]
    threads += [threading.Thread(target=cut, args=(i, {**long, "stream": True}, "stream")) for i in range(4)]
    threads += [threading.Thread(target=cut, args=(i, shared, "shared")) for i in range(2)]
    threads += [threading.Thread(target=finished, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)
    return ids


def unpriced(url: str, model: str, metrics_port: int) -> dict[str, Any]:
    before, _ = engine_generated_tokens(metrics_port)
    ids = leave_early(url, model, "unpriced")
    found = settled(url, ids)
    time.sleep(15)  # Ray's metrics agent exports every few seconds
    after, series = engine_generated_tokens(metrics_port)
    rows = [r for r in ledger_rows(url) if r["request_id"] in ids]
    owners = [r for r in rows if r["cache"] not in ("hit", "semantic_hit", "coalesced")]
    billed = sum(r["completion_tokens"] for r in owners)
    return {
        "engine_generated": after - before,
        "billed_completion_tokens": billed,
        "unpriced": (after - before) - billed,
        "requests": len(ids),
        "rows": len(found),
        "statuses": sorted({r["status"] for r in rows}),
        "engine_series": series,
    }


# ---- faults -----------------------------------------------------------------------------------------


def send_tagged(url: str, model: str, tag: str, n: int) -> tuple[set[str], list[int]]:
    ids, statuses = set(), []
    for i in range(n):
        rid = f"{RUN}-{tag}-{i}"
        try:
            resp = httpx.post(
                f"{url}/v1/chat/completions",
                json=chat(model),
                headers=auth("acme", **{"x-request-id": rid}),
                timeout=300,
            )
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                ids.add(rid)
        except httpx.HTTPError:
            statuses.append(0)
    return ids, statuses


def fault_ledger_locked(stack: BenchStack) -> dict[str, Any]:
    lock = sqlite3.connect(stack.config.home_path / "ledger.sqlite", timeout=30, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        ids, statuses = send_tagged(stack.url, stack.model, "ledger-locked", 6)
        took = time.monotonic() - started
        time.sleep(5)
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    return {"answered": len(ids), "statuses": statuses, "seconds": took, "lost": len(ids - settled(stack.url, ids))}


def fault_state_killed(stack: BenchStack) -> dict[str, Any]:
    os.kill(lc.replica_pids(stack.config, stack.config.app_name, "router-state")[0], signal.SIGKILL)
    ids, statuses = send_tagged(stack.url, stack.model, "state-killed", 6)
    return {"answered": len(ids), "statuses": statuses, "lost": len(ids - settled(stack.url, ids))}


def fault_replica_killed(stack: BenchStack, model_id: str) -> dict[str, Any]:
    outcomes: list[tuple[float, float, int, str]] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        i = 0
        while not stop.is_set():
            rid = f"{RUN}-replica-killed-{worker}-{i}"
            i += 1
            sent = time.monotonic()
            try:
                status = httpx.post(
                    f"{stack.url}/v1/chat/completions",
                    json=chat(stack.model),
                    headers=auth("acme", **{"x-request-id": rid}),
                    timeout=300,
                ).status_code
            except httpx.HTTPError:
                status = 0
            outcomes.append((sent, time.monotonic() - sent, status, rid))
            time.sleep(0.5)

    workers = [threading.Thread(target=client, args=(w,), daemon=True) for w in range(3)]
    for worker in workers:
        worker.start()
    # Look the pid up before the clock starts: `ray list actors` takes seconds on two cores, and a kill
    # timed from before the lookup would count successes that the still-living replica answered.
    pid = lc.replica_pids(stack.config, stack.config.app_name, f"engine-{model_id}")[0]
    time.sleep(5)
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    deadline = killed + 900

    def recoveries() -> list[float]:
        """Successes sent after the first failure: the pool answering again, not the dying replica's last words."""
        failed = min((t for t, _, s, _ in outcomes if t >= killed and s != 200), default=None)
        return [t + d for t, d, s, _ in outcomes if failed is not None and s == 200 and t > failed]

    while not recoveries() and time.monotonic() < deadline:
        time.sleep(2)
    recovered = recoveries()
    stop.set()
    for worker in workers:
        worker.join(310)
    after = [(d, s) for t, d, s, _ in outcomes if t >= killed]
    failed = [(d, s) for d, s in after if s != 200]
    answered = {rid for _, _, s, rid in outcomes if s == 200}
    return {
        "recovery_s": (min(recovered) - killed) if recovered else None,
        "failed": len(failed),
        "failed_statuses": sorted({s for _, s in failed}),
        "slowest_failure_s": max((d for d, _ in failed), default=0.0),
        "lost": len(answered - settled(stack.url, answered)),
    }


def wait_until_serving(stack: BenchStack, timeout_s: float = 900) -> float:
    """Seconds until a plain chat answers 200, so that one fault's recovery does not count against the next."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            resp = httpx.post(
                f"{stack.url}/v1/chat/completions", json=chat(stack.model), headers=auth("acme"), timeout=300
            )
            if resp.status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(5)
    raise TimeoutError(f"the stack did not serve again within {timeout_s} s")


def fault_milvus_down(stack: BenchStack) -> dict[str, Any]:
    wait_until_serving(stack)
    state = lc.read_state(stack.config)
    lc.stop_tree(state.milvus_pid)
    rag = httpx.post(f"{stack.url}/v1/chat/completions", json=chat("acme-support"), headers=auth("acme"), timeout=300)
    _, statuses = send_tagged(stack.url, stack.model, "milvus-down", 4)
    return {
        "rag_status": rag.status_code,
        "rag_code": rag.json()["error"]["code"],
        "chat_failures": sum(s != 200 for s in statuses),
    }


# ---- overload ---------------------------------------------------------------------------------------


async def offered(url: str, model: str, concurrency: int, n: int) -> dict[str, Any]:
    """A closed loop of `concurrency` clients: latency of every answer, accepted or refused."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=concurrency + 4, max_keepalive_connections=concurrency + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as http:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                started = time.monotonic()
                resp = await http.post("/v1/chat/completions", json=chat(model, max_tokens=32), headers=auth("acme"))
                results.append((resp.status_code, (time.monotonic() - started) * 1000))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.monotonic() - started
    accepted = [ms for s, ms in results if s == 200]
    refused = [ms for s, ms in results if s in (429, 503)]
    return {
        "concurrency": concurrency,
        "accepted": len(accepted),
        "refused": len(refused),
        "other": len(results) - len(accepted) - len(refused),
        "accepted_p50_ms": percentile(accepted, 50),
        "accepted_p99_ms": percentile(accepted, 99),
        "refused_p99_ms": percentile(refused, 99),
        "accepted_per_s": len(accepted) / wall if wall else 0.0,
    }


# ---- the run ----------------------------------------------------------------------------------------


def plot(results: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    base, over = results["overload"]["sustainable"], results["overload"]["twice"]
    labels = [f"{base['concurrency']} clients\n(sustainable)", f"{over['concurrency']} clients\n(2x offered)"]
    axes[0].bar(labels, [base["accepted_p99_ms"], over["accepted_p99_ms"]], color=["C0", "C1"])
    axes[0].set(ylabel="accepted requests, p99 end-to-end (ms)", title="Latency of what is accepted")
    axes[1].bar(labels, [base["refused"], over["refused"]], color=["C0", "C1"])
    axes[1].set(ylabel="requests refused at once (503 + Retry-After)", title="What is refused instead")
    fig.suptitle("llm-serve under twice the load it sustains (router.max_inflight_requests)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", help="engine dtype ('default': the bench config's)")
    parser.add_argument("--fuzz-cases", type=int, default=60, help="schemathesis cases per POST operation")
    parser.add_argument("--fuzz-timeout-s", type=float, default=120.0)
    parser.add_argument("--burst", type=int, default=32)
    parser.add_argument("--max-inflight", type=int, default=16, help="router.max_inflight_requests of the stack")
    parser.add_argument(
        "--only",
        choices=["faults"],
        help="re-measure only the faults; the other figures are kept from the last run's raw details "
        "(the report says which sections were re-run)",
    )
    args = parser.parse_args(argv)
    stack = BenchStack(bench_env(), patch_for(args))
    results: dict[str, Any] = json.loads(DETAILS.read_text()) if args.only else {}
    started = time.monotonic()
    try:
        _say("starting the bench stack with keys")
        stack.start()
        first_answer_with_key(stack)
        ingest_tenants(stack)
        if args.only:
            _say("faults only: ledger locked, state actor killed, engine replica killed, Milvus stopped")
            results["faults"] = run_faults(stack)
            results["rerun"] = {"sections": ["faults"], "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            return finish(results, args, argv, started)
        _say("cross-tenant paths")
        results["cross_tenant"] = cross_tenant(stack.url, stack.model)
        _say("fuzzing the live router")
        results["fuzz"] = asdict(
            fuzz_endpoint(
                stack.url,
                auth("fuzz"),
                stack.model,
                stack.config.embedding_models[0].id,
                cases_per_operation=args.fuzz_cases,
                timeout_s=args.fuzz_timeout_s,
            )
        )
        _say("a burst against a small budget")
        results["burst"] = asyncio.run(burst(stack.url, stack.model, args.burst))
        _say("clients that leave early; the engine's token count against the ledger")
        results["unpriced"] = unpriced(stack.url, stack.model, stack.config.ray.metrics_export_port)
        _say("overload")
        results["overload"] = {
            "sustainable": asyncio.run(offered(stack.url, stack.model, args.max_inflight, 4 * args.max_inflight)),
            "twice": asyncio.run(offered(stack.url, stack.model, 2 * args.max_inflight, 8 * args.max_inflight)),
        }
        _say("faults: ledger locked, state actor killed, engine replica killed, Milvus stopped")
        results["faults"] = run_faults(stack)
    finally:
        stack.stop()
    return finish(results, args, argv, started)


def run_faults(stack: BenchStack) -> dict[str, Any]:
    return {
        "ledger_lock": fault_ledger_locked(stack),
        "state_kill": fault_state_killed(stack),
        "replica_loss": fault_replica_killed(stack, stack.config.models[0].id),
        "milvus_down": fault_milvus_down(stack),
    }


def finish(results: dict[str, Any], args: argparse.Namespace, argv: list[str] | None, started: float) -> int:
    results["seconds"] = time.monotonic() - started
    if not args.only:
        results["full_run_date"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    command = "python benchmarks/reliability.py " + " ".join(argv if argv is not None else sys.argv[1:])
    report = build_report(results, args, command.strip())
    write_report(report)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "reliability-details.json").write_text(json.dumps(results, indent=1, default=str))
    plot(results, RESULTS / f"{SCENARIO}.png")
    return 0


def first_answer_with_key(stack: BenchStack) -> None:
    body = chat(stack.model, max_tokens=4)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        try:
            if (
                httpx.post(
                    f"{stack.url}/v1/chat/completions", json=body, headers=auth("admin"), timeout=300
                ).status_code
                == 200
            ):
                return
        except httpx.HTTPError:
            pass
        time.sleep(2)
    raise RuntimeError("the stack never answered")


def build_report(results: dict[str, Any], args: argparse.Namespace, command: str) -> dict[str, Any]:
    fuzz_out, faults = results["fuzz"], results["faults"]
    base, over = results["overload"]["sustainable"], results["overload"]["twice"]
    loss = faults["replica_loss"]
    metrics = {
        "fuzz_cases": metric(fuzz_out["cases"], "cases", True),
        "fuzz_5xx": metric(fuzz_out["server_errors"], "responses", False),
        "fuzz_bad_errors": metric(fuzz_out["bad_errors"], "responses", False),
        "hung_requests": metric(fuzz_out["hung"], "requests", False),
        "cross_tenant_reads": metric(results["cross_tenant"]["reads"], "reads", False),
        "overspend_ratio": metric(results["burst"]["spent_usd"] / BUDGET_USD, "spent/budget", False),
        "unpriced_engine_tokens": metric(results["unpriced"]["unpriced"], "tokens", False),
        "lost_requests@ledger_lock": metric(faults["ledger_lock"]["lost"], "requests", False),
        "lost_requests@state_kill": metric(faults["state_kill"]["lost"], "requests", False),
        "lost_requests@replica_loss": metric(loss["lost"], "requests", False),
        "recovery_s@replica_loss": metric(loss["recovery_s"] or -1, "s", False),
        "slowest_failure_s@replica_loss": metric(loss["slowest_failure_s"], "s", False),
        "chat_failures@milvus_down": metric(faults["milvus_down"]["chat_failures"], "requests", False),
        "accepted_p99_ms@overload_2x": metric(
            over["accepted_p99_ms"] or 0, "ms", False, "sustainable load", base["accepted_p99_ms"] or 0
        ),
        "refused_p99_ms@overload_2x": metric(over["refused_p99_ms"] or 0, "ms", False),
        "accepted_per_s@overload_2x": metric(
            over["accepted_per_s"], "req/s", True, "sustainable load", base["accepted_per_s"]
        ),
    }
    return {
        "scenario": SCENARIO,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "runs": 1,
        "metrics": metrics,
        "notes": (
            f"One run on the bench stack (engine dtype {args.dtype}), with keys. Fuzz: {args.fuzz_cases} schemathesis "
            "cases (positive and negative) per POST operation, most `model` values swapped for a served one, a key "
            f"capped at 4 output tokens. Burst: {args.burst} concurrent requests (max_tokens 8) on a ${BUDGET_USD} "
            "budget at $100/$200 per 1M tokens. Unpriced: 4 non-streamed requests timed out by the client at 1.5 s, "
            "4 streams cut after 3-6 chunks, 2 identical greedy streams both abandoned, 4 finished; engine tokens "
            "from vLLM's own counter on Ray's metrics endpoint. Overload: closed loops at max_inflight_requests "
            f"({args.max_inflight}) and twice it. Faults in order: ledger database locked (BEGIN EXCLUSIVE) while 6 "
            "requests run, router-state actor SIGKILLed then 6 requests, engine replica SIGKILLed under 3 clients, "
            "Milvus Lite stopped. Details in raw/reliability-details.json."
            + (
                f" The faults were re-measured in a faults-only run (--only faults) on {results['rerun']['date']}; "
                f"the other sections are from the full run of {results.get('full_run_date', 'an earlier date')}."
                if results.get("rerun")
                else ""
            )
        ),
    }


if __name__ == "__main__":
    sys.exit(main())
