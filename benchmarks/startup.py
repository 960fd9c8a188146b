"""How long `llm-serve up` takes to a first answer: cold (a fresh machine after setup) and warm (a restart).

Cold: a new llm-serve home, vLLM compile cache and torch inductor cache, so `up` converts the bundled
model, starts Milvus and Ray, and the engine compiles from nothing, as on a machine that has just run
`scripts/setup.sh`. Warm: `down`, then `up` again on the same home and caches. Rounds alternate cold
and warm, and every line `up` prints is kept with the second it arrived, so the report says where the
time went (model conversion, Milvus and Ray, deployments, the engine's phases).

    .venv/bin/python benchmarks/startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import BENCH_CONFIG, RESULTS, machine, metric, write_report  # noqa: E402
from benchmarks.servers import first_answer  # noqa: E402
from llm_serve.config import load_config  # noqa: E402

SCENARIO = "startup"
# The targets of issue 15: seconds from `up` to the first answer.
TARGETS = {"cold": 240.0, "warm": 60.0}


def _say(message: str) -> None:
    print(f"[startup] {message}", file=sys.stderr, flush=True)


def timed_up(env: dict[str, str], url: str, model: str) -> dict[str, Any]:
    """`up --detach`, then one chat answer; the seconds to it and `up`'s lines with their arrival times."""
    cli = [sys.executable, "-m", "llm_serve.cli", "--config", str(BENCH_CONFIG)]
    started = time.monotonic()
    proc = subprocess.Popen(
        [*cli, "up", "--detach"], env=env, stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    lines = []
    assert proc.stderr is not None
    for raw in proc.stderr:
        text = raw.rstrip()
        if text and not text.startswith(("{", " " * 6, "INFO ")):  # Serve's JSON and option dumps
            lines.append([round(time.monotonic() - started, 1), text])
            print(f"  [{lines[-1][0]:6.1f} s] {text}", file=sys.stderr, flush=True)
    if proc.wait() != 0:
        raise RuntimeError(f"up failed: {lines[-5:]}")
    up_s = time.monotonic() - started
    first_answer(url, model)
    return {"first_answer_s": time.monotonic() - started, "up_returned_s": up_s, "lines": lines}


def down(env: dict[str, str]) -> None:
    cli = [sys.executable, "-m", "llm_serve.cli", "--config", str(BENCH_CONFIG)]
    subprocess.run([*cli, "down"], env=env, check=False, capture_output=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    config = load_config(BENCH_CONFIG)
    url, model = f"http://127.0.0.1:{config.server.port}", config.models[0].id
    runs: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    for r in range(args.rounds):
        home = Path(tempfile.mkdtemp(prefix="llm-serve-startup-"))
        env = {
            **os.environ,
            "LLM_SERVE_HOME": str(home),
            "VLLM_CACHE_ROOT": str(home / "vllm-cache"),
            "TORCHINDUCTOR_CACHE_DIR": str(home / "inductor-cache"),
            "HF_HUB_OFFLINE": "1",
        }
        try:
            for kind in ("cold", "warm"):
                _say(f"round {r + 1}/{args.rounds}: {kind} start")
                try:
                    runs[kind].append(timed_up(env, url, model))
                finally:
                    down(env)
                _say(f"{kind}: first answer after {runs[kind][-1]['first_answer_s']:.0f} s")
        finally:
            shutil.rmtree(home, ignore_errors=True)

    metrics: dict[str, Any] = {}
    targets = []
    for kind, rs in runs.items():
        values = [x["first_answer_s"] for x in rs]
        median = statistics.median(values)
        metrics[f"first_answer_s/{kind}"] = metric(median, "s", False)
        metrics[f"first_answer_s_max/{kind}"] = metric(max(values), "s", False)
        targets.append(
            {
                "target": f"{kind} start: first answer within {TARGETS[kind]:g} s",
                "measured_s": round(median, 1),
                "spread_s": [round(min(values), 1), round(max(values), 1)],
                "met": median <= TARGETS[kind],
            }
        )
    report = {
        "scenario": SCENARIO,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": "python benchmarks/startup.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "runs": args.rounds,
        "metrics": metrics,
        "targets": targets,
        "raw": runs,
        "notes": (
            "`llm-serve up --detach` with the bench config, then one chat request; seconds from launching `up` to "
            "its answer. Cold: a new llm-serve home (model converted again), new VLLM_CACHE_ROOT and "
            "TORCHINDUCTOR_CACHE_DIR. Warm: `down`, then `up` on the same home. Rounds alternate cold and warm; "
            "medians, and the slowest start. `raw` has every line `up` printed with its second."
        ),
    }
    write_report(report)
    (RESULTS / "raw").mkdir(parents=True, exist_ok=True)
    (RESULTS / "raw" / "startup-lines.json").write_text(json.dumps(runs, indent=1))
    for t in targets:
        print(f"{t['target']}: {t['measured_s']} s (spread {t['spread_s']}) met: {t['met']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
