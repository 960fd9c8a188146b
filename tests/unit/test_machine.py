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
