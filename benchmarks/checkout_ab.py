"""Does a change slow the serving path? The same load on two checkouts of llm-serve, one after the other.

Each leg starts the bench stack (benchmarks/configs/bench.yaml) from one checkout, warms it up, runs
`--rounds` rounds of streamed synthetic chat at `--concurrency` clients (the load test's workload,
`cache: false`, so the full path without cache help), and stops it. A checkout other than the
working tree is a `git worktree` of the given revision, imported through PYTHONPATH by the CLI, the
Ray head and every replica it starts; the virtual env is this one. Legs run in the order given, so
`--order before after before` brackets the change and shows drift. The report gives medians over
rounds and the ratio of every leg to the first label's.

    python benchmarks/checkout_ab.py --rev before=4b18a2d --rev after=. --order before after before
    python benchmarks/checkout_ab.py --report before after --scenario router-refactor-ab   # legs already run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from benchmarks.report import RESULTS, machine, metric, write_report  # noqa: E402

RAW = RESULTS / "raw"
LEG_CODE = r"""
import asyncio, json, sys, time
from dataclasses import replace
from pathlib import Path
from benchmarks.loadgen import line, run_concurrency, summarize
from benchmarks.servers import bench_env, first_answer
from benchmarks.stack import BenchStack
from benchmarks.workloads import build_workload
import llm_serve

label, rounds, concurrency, requests, max_tokens, dtype, out, engine = sys.argv[1:9]
rounds, concurrency, requests, max_tokens = int(rounds), int(concurrency), int(requests), int(max_tokens)
print(f"[{label}] llm_serve from {Path(llm_serve.__file__).parent}", file=sys.stderr, flush=True)

def patch(data):
    if dtype != "default":
        data["models"][0]["engine"]["dtype"] = dtype
    data["models"][0].setdefault("engine", {}).update(json.loads(engine))

stack = BenchStack(bench_env(), patch)
result = {"label": label, "llm_serve": str(Path(llm_serve.__file__).parent), "rounds": []}
started = time.monotonic()
try:
    stack.start()
    first_answer(stack.url, stack.model)
    result["startup_s"] = time.monotonic() - started
    nocache = {"cache": False}

    async def run():
        warm = [replace(s, extra=nocache) for s in build_workload("synthetic", concurrency, max_tokens=16, seed=999)]
        await run_concurrency(stack.url, stack.model, warm, concurrency, progress=False)
        for r in range(rounds):
            specs = build_workload("synthetic", requests, max_tokens=max_tokens, seed=concurrency + r)
            specs = [replace(s, extra=nocache) for s in specs]
            records, wall = await run_concurrency(stack.url, stack.model, specs, concurrency, progress=False)
            summary = summarize(records, wall)
            result["rounds"].append(summary)
            print(line(f"{label} c{concurrency} round {r}", summary), flush=True)

    asyncio.run(run())
finally:
    stack.stop()
Path(out).write_text(json.dumps(result, indent=1))
"""
KEYS = (
    ("output_tokens_per_s", "output_tokens_per_s", "tok/s", True),
    ("ttft_p50_ms", "ttft_ms_p50", "ms", False),
    ("tpot_p50_ms", "tpot_ms_p50", "ms", False),
)


def _say(message: str) -> None:
    print(f"[checkout-ab] {message}", file=sys.stderr, flush=True)


def checkout(rev: str, worktrees: Path) -> Path:
    """The working tree for `.`, else a detached worktree of `rev` (made once per run)."""
    if rev == ".":
        return ROOT
    path = worktrees / rev.replace("/", "_")
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), rev], check=True)
    return path


def run_leg(label: str, tree: Path, args: argparse.Namespace) -> Path:
    out = RAW / f"ab-{label}-{int(time.time())}.json"
    RAW.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    _say(f"leg {label}: {tree}")
    engine = dict(item.split("=", 1) for lab, _, item in (e.partition(":") for e in args.engine) if lab == label)
    argv = [label, args.rounds, args.concurrency, args.requests, args.max_tokens, args.dtype, out, json.dumps(engine)]
    subprocess.run([sys.executable, "-c", LEG_CODE, *map(str, argv)], cwd=tree, env=env, check=True)
    return out


def report(legs: list[tuple[str, Path]], base_label: str, args: argparse.Namespace, command: str) -> dict[str, Any]:
    """Medians over each label's rounds (all its legs); every label against `base_label`'s."""
    by_label: dict[str, list[dict[str, Any]]] = {}
    for label, path in legs:
        by_label.setdefault(label, []).append(json.loads(path.read_text()))

    def median(label: str, key: str) -> float:
        return statistics.median(r[key] for leg in by_label[label] for r in leg["rounds"])

    load = f"c{args.concurrency}"
    metrics: dict[str, Any] = {}
    for label in by_label:
        for name, key, unit, higher in KEYS:
            value = median(label, key)
            if label == base_label:
                metrics[f"{name}@{load}/{label}"] = metric(value, unit, higher)
            else:
                metrics[f"{name}@{load}/{label}-vs-{base_label}"] = metric(
                    value, unit, higher, base_label, median(base_label, key)
                )
    rounds = {
        f"{label} leg {i}": [round(r["output_tokens_per_s"], 1) for r in leg["rounds"]]
        for label, group in by_label.items()
        for i, leg in enumerate(group)
    }
    return {
        "scenario": args.scenario,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": command,
        "runs": min(len(leg["rounds"]) * len(group) for group in by_label.values() for leg in group),
        "metrics": metrics,
        "notes": (
            f"Legs in the order {[label for label, _ in legs]}, each a fresh bench stack (dtype {args.dtype}), "
            f"warmed up, then {args.rounds} rounds of {args.requests} streamed synthetic chat requests "
            f"(~64-token prompts, {args.max_tokens} output tokens, ignore_eos, cache: false) at "
            f"{args.concurrency} clients. Medians over all rounds of a label. Output tok/s per round: {rounds}."
            + (f" {args.notes}" if args.notes else "")
        ),
    }


def plot(legs: list[tuple[str, Path]], out: Path, concurrency: int) -> None:
    """Output tok/s of every round, leg by leg in the order they ran, one colour per label."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    colours: dict[str, str] = {}
    for i, (label, path) in enumerate(legs):
        values = [r["output_tokens_per_s"] for r in json.loads(path.read_text())["rounds"]]
        colour = colours.setdefault(label, f"C{len(colours)}")
        ax.scatter(
            [i] * len(values),
            values,
            color=colour,
            label=label if label not in ax.get_legend_handles_labels()[1] else None,
        )
        ax.hlines(statistics.median(values), i - 0.25, i + 0.25, color=colour)
    ax.set_xticks(range(len(legs)), [f"{label}\nleg {i + 1}" for i, (label, _) in enumerate(legs)])
    ax.set(ylabel="output tokens/s", title=f"Same load on two checkouts, {concurrency} clients (rounds; line: median)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", action="append", default=[], metavar="LABEL=REV", help="a git revision, or .")
    parser.add_argument("--order", nargs="+", metavar="LABEL", help="legs to run, in order (labels of --rev)")
    parser.add_argument("--report", nargs="+", metavar="LABEL", help="only report the legs already run")
    parser.add_argument("--scenario", default="checkout-ab")
    parser.add_argument("--notes", help="more to say in the report's notes")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--dtype",
        default="float32",
        help="engine dtype for every leg ('default': the config's); float32 "
        "because bf16 is emulated, and very slow, on CPUs without native bf16",
    )
    parser.add_argument(
        "--engine",
        action="append",
        default=[],
        metavar="LABEL:FIELD=VALUE",
        help="an engine field (string) set for one label's legs, e.g. bind:cpu_omp_threads_bind=0-1",
    )
    args = parser.parse_args(argv)
    command = "python benchmarks/checkout_ab.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.report:
        legs = [(label, path) for label in args.report for path in RAW.glob(f"ab-{label}-*.json")]
        legs.sort(key=lambda leg: int(leg[1].stem.rsplit("-", 1)[1]))  # the order they ran in
        base = args.report[0]
    else:
        revs = dict(item.split("=", 1) for item in args.rev)
        worktrees = Path(tempfile.mkdtemp(prefix="llm-serve-ab-"))
        try:
            legs = [(label, run_leg(label, checkout(revs[label], worktrees), args)) for label in args.order]
        finally:
            for tree in worktrees.iterdir():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=False)
        base = args.order[0]
    result = report(legs, base, args, command)
    write_report(result)
    plot(legs, RESULTS / f"{args.scenario}.png", args.concurrency)
    return 0


if __name__ == "__main__":
    sys.exit(main())
