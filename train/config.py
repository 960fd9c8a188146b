"""One training job, as configuration: a recipe (configs/train/*.yaml) over these defaults.

torchtune's lesson applies: a recipe is a small readable file and the code behind it is one loop,
not a trainer hierarchy. Every field has a default and a description; a bad file fails before Ray
starts, naming the field.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from llm_serve.config import ConfigError, Strict, format_errors, read_yaml

ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


class DataSpec(Strict):
    path: str = Field(..., description="JSONL training data (chat `messages` or `prompt`/`completion`).")
    format: Literal["auto", "chat", "prompt_completion"] = Field("auto", description="Line format.")
    eval_path: str | None = Field(None, description="Separate eval JSONL; None splits eval_fraction off `path`.")
    eval_fraction: float = Field(0.1, ge=0, lt=1, description="Share of `path` held out when no eval_path.")
    max_length: int = Field(512, ge=16, description="Tokens per example; longer ones are cut from the right.")


class LoraSpec(Strict):
    r: int = Field(8, ge=1, description="Adapter rank.")
    alpha: int = Field(16, ge=1, description="Scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapter input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], description="Modules that get adapters."
    )


class MethodSpec(Strict):
    kind: Literal["lora", "qlora", "full"] = Field(
        "lora", description="LoRA adapters, QLoRA (4-bit base; GPU and bitsandbytes), or every weight."
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)


class OptimSpec(Strict):
    learning_rate: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    epochs: int = Field(1, ge=1, description="Passes over the training data (unless max_steps stops first).")
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps in total; None: epochs decide.")
    micro_batch_size: int = Field(4, ge=1, description="Examples per worker per forward pass.")
    gradient_accumulation_steps: int = Field(1, ge=1)
    warmup_steps: int = Field(0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)


class DeepSpeedSpec(Strict):
    config: str = Field("configs/deepspeed/zero2.json", description="DeepSpeed JSON (relative to the project).")
    offload_optimizer: bool | None = Field(None, description="Override the file: optimizer state on CPU.")


class ScalingSpec(Strict):
    num_workers: int = Field(2, ge=1, description="Ray Train workers (data-parallel ranks).")
    use_gpu: bool = Field(False, description="One GPU per worker.")
    resources_per_worker: dict[str, float] = Field(
        default_factory=lambda: {"CPU": 1.0}, description="Ray resources each worker reserves."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="Torch threads per worker on CPU; None: cores / workers (Ray pins OMP otherwise)."
    )


class CheckpointSpec(Strict):
    storage_path: str | None = Field(None, description="Where runs and checkpoints go; default <home>/train-runs.")
    every_n_steps: int | None = Field(None, ge=1, description="Checkpoint cadence; None: at the end only.")
    num_to_keep: int = Field(2, ge=1, description="Checkpoints kept per run.")


class OutputSpec(Strict):
    adapter_name: str = Field(..., description="Registry name; served as `<base model id>:<name>`.")
    registry: str | None = Field(
        None, description="Adapter registry: a directory or a pyarrow filesystem URI; default <home>/adapters."
    )

    @model_validator(mode="after")
    def _name(self) -> OutputSpec:
        if not ADAPTER_NAME.match(self.adapter_name):
            raise ValueError(f"adapter_name {self.adapter_name!r} must match {ADAPTER_NAME.pattern}")
        return self


class TrainConfig(Strict):
    name: str = Field(..., description="Run name: checkpoints of a run with the same name resume.")
    base_model: str = Field(
        "smollm2-135m-instruct", description="A registry model, a local Hugging Face directory or a hub id."
    )
    base_model_id: str | None = Field(
        None, description="The served model id the adapter belongs to; default: base_model."
    )
    dtype: Literal["float32", "bfloat16"] = Field(
        "float32", description="Training dtype (bf16 matmuls are ~6x slower on this CPU; fp32 there)."
    )
    seed: int = Field(0, description="Data order, adapter init and dropout: a fixed seed repeats a run.")
    log_every_steps: int = Field(1, ge=1)
    data: DataSpec
    method: MethodSpec = Field(default_factory=MethodSpec)
    optim: OptimSpec = Field(default_factory=OptimSpec)
    deepspeed: DeepSpeedSpec = Field(default_factory=DeepSpeedSpec)
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    checkpoint: CheckpointSpec = Field(default_factory=CheckpointSpec)
    output: OutputSpec

    @model_validator(mode="after")
    def _method_fits(self) -> TrainConfig:
        if self.method.kind == "qlora" and not self.scaling.use_gpu:
            raise ValueError("method qlora needs GPUs (scaling.use_gpu: true) and bitsandbytes")
        return self

    @property
    def served_base(self) -> str:
        return self.base_model_id or self.base_model


def project_path(value: str) -> Path:
    """Relative paths mean the current directory if they exist there, else the project root."""
    path = Path(value).expanduser()
    if path.is_absolute() or path.exists():
        return path.resolve()
    return PROJECT_ROOT / path


def load_train_config(path: str | Path) -> TrainConfig:
    data, origin = read_yaml(path, "training config")
    return parse_train_config(data, origin)


def parse_train_config(data: Any, origin: str = "<dict>") -> TrainConfig:
    try:
        return TrainConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(format_errors(exc, origin, "training config")) from None
