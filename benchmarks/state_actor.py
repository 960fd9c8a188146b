"""How many requests the single router-state actor settles per second: the capacity model's first limit.

Every request makes at least two calls to `router-state` (`admit` before work, `record` after), and a cacheable
one two more (`cache_get`, `cache_put`); docs/scaling.md. This drives exactly those calls, through a Serve
handle as a router replica makes them, from 1, 8 and 64 concurrent callers, and compares them with the same
calls on an in-process RouterState (no Ray), which is the Python work alone. A key with an rpm limit and a
budget is used, so the admission does its whole job; the ledger is SQLite in a temporary home.

    python benchmarks/state_actor.py [--seconds 10] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks.report import machine, metric, write_report

CONCURRENCY = (1, 8, 64)
KEY = ("bench", 10**9, 10**12, 10**9, "month")  # name, rpm, tpm, budget_usd, period: never refuses


def _row() -> Any:
    from llm_serve.router.ledger import LedgerRow

    return LedgerRow(request_id=uuid.uuid4().hex, key_name=KEY[0], route="chat", model="m", prompt_tokens=64,
                     completion_tokens=64, cost_usd=1e-6)  # fmt: skip


async def one_request(state: Any, remote: bool, cached: bool) -> None:
    """What one request asks of the state: admit, (cache get and put), record."""

    async def call(method: str, *args: Any) -> Any:
        target = getattr(state, method)
        return await (target.remote(*args) if remote else target(*args))

    admitted = await call("admit", *KEY, 128, 1e-5)
    if cached:
        key = uuid.uuid4().hex
        await call("cache_get", key)
        await call("cache_put", key, {"answer": "x" * 200}, 200)
    await call("record", _row(), admitted.get("reservation"))


async def drive(state: Any, remote: bool, cached: bool, concurrency: int, seconds: float) -> float:
    """Requests per second over `seconds` with `concurrency` callers in closed loop."""
    done = 0
    stop_at = time.monotonic() + seconds

    async def caller() -> None:
        nonlocal done
        while time.monotonic() < stop_at:
            await one_request(state, remote, cached)
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


def config_dict(home: Path) -> dict[str, Any]:
    return {"home": str(home), "models": [{"id": "m", "source": "s"}], "embedding_models": []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from llm_serve.router.state import RouterState

    home = Path(tempfile.mkdtemp(prefix="state-bench-"))
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)  # a Ray of its own
    handle = serve.run(
        serve.deployment(RouterState, name="router-state").options(max_ongoing_requests=1000).bind(config_dict(home)),
        name="state-bench",
        route_prefix=None,
    )
    local = RouterState(config_dict(home / "local"))
    results: dict[str, list[float]] = {}
    try:
        for r in range(args.rounds):
            systems = [("actor", handle, True), ("in-process", local, False)]
            for name, state, remote in systems if r % 2 == 0 else reversed(systems):  # alternate who goes first
                for cached in (False, True):
                    for c in CONCURRENCY:
                        rate = asyncio.run(drive(state, remote, cached, c, args.seconds))
                        label = f"{'cacheable' if cached else 'plain'}@c{c}/{name}"
                        results.setdefault(label, []).append(rate)
                        print(f"round {r + 1}: {label:28} {rate:8.0f} req/s", file=sys.stderr, flush=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    metrics = {}
    for kind in ("plain", "cacheable"):
        for c in CONCURRENCY:
            actor = statistics.median(results[f"{kind}@c{c}/actor"])
            inproc = statistics.median(results[f"{kind}@c{c}/in-process"])
            metrics[f"requests_per_s@{kind}-c{c}/vs-in-process"] = metric(actor, "req/s", True, "in-process", inproc)
    spread = "; ".join(f"{k} {min(v):.0f}-{max(v):.0f}" for k, v in sorted(results.items()))
    report = {
        "scenario": "state-actor",
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "command": f"python benchmarks/state_actor.py --seconds {args.seconds:g} --rounds {args.rounds}",
        "runs": args.rounds,
        "metrics": metrics,
        "notes": (
            "Requests per second the single router-state actor serves: admit + record per request ('plain'), plus "
            "cache_get + cache_put ('cacheable'), through a Serve DeploymentHandle from one driver process (as a "
            "router replica calls it), closed loop, against the same calls on an in-process RouterState (the "
            f"Python work alone). Medians of {args.rounds} rounds of {args.seconds:g} s, the two systems "
            f"alternating which goes first; min-max over rounds: {spread}."
        ),
    }
    write_report(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
