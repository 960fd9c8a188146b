"""What every benchmark writes: results in the shape of ../shared/BENCHMARKS.md, and the machine they ran on."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
BENCH_CONFIG = ROOT / "benchmarks" / "configs" / "bench.yaml"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(
            next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")).split()[1]
        )
    except (OSError, StopIteration, ValueError):
        mem_kb = 0
    from llm_serve.engine.machine import cpu_info

    info = cpu_info()  # the ISA and native bf16 decide the engine's dtype: figures need them beside them
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024),
        "gpu": None,
        "vector_isa": info.vector_isa,
        "native_bf16": info.native_bf16,
    }


def percentile(values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, as numpy's default; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def metric(
    value: float, unit: str, higher: bool, baseline: str | None = None, baseline_value: float | None = None
) -> dict[str, Any]:
    """One metric entry; `ratio` is value / baseline_value when a baseline was measured in the same run."""
    out: dict[str, Any] = {"value": round(value, 3), "unit": unit, "higher_is_better": higher}
    if baseline is not None and baseline_value:
        out.update(baseline=baseline, baseline_value=round(baseline_value, 3), ratio=round(value / baseline_value, 4))
    return out


def write_report(report: dict[str, Any]) -> Path:
    """Save to benchmarks/results/<scenario>.json and print one line per metric."""
    path = RESULTS / f"{report['scenario']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2) + "\n")
    for name, m in report["metrics"].items():
        print(
            f"{name:40} {m['value']:>10} {m['unit']:8} {m.get('baseline', '')}: {m.get('baseline_value', '-')} "
            f"ratio {m.get('ratio', '-')}"
        )
    return path
