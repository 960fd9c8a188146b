"""Named model sources: the bundled SmolLM2, a local Hugging Face directory, or a hub id."""

from llm_serve.models.registry import QUANTIZED, REGISTRY, QuantizedModel, RegistryModel
from llm_serve.models.resolve import ModelNotProvisioned, resolve_model_source

__all__ = ["QUANTIZED", "REGISTRY", "ModelNotProvisioned", "QuantizedModel", "RegistryModel", "resolve_model_source"]
