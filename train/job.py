"""A training job end to end: resolve the base model, run the Ray Train workers, publish the adapter.

`llm-serve train --config configs/train/<name>.yaml` calls `run()`, on whatever Ray the process
reaches: $RAY_ADDRESS (set by `ray job submit`), the cluster of a running `llm-serve up`, or a
private local Ray started for the job. The adapter lands in the registry that the engine pools read,
so it is served without a restart.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_serve.adapters import AdapterInfo, AdapterRegistry
from llm_serve.config import Config
from llm_serve.telemetry import tracing
from train.config import TrainConfig, project_path
from train.trainer import ADAPTER_DIR, HISTORY_FILE, MODEL_DIR, train_loop_per_worker


@dataclass
class JobResult:
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    checkpoint_path: str
    adapter: AdapterInfo | None
    model_path: str | None
    elapsed_s: float


def default_registry(config: Config) -> str:
    return str(config.home_path / "adapters")


def connect(config: Config, address: str | None = None) -> str:
    """Join the Ray this job should run on; returns a description for the log."""
    import ray

    from llm_serve import local_cluster as lc

    if ray.is_initialized():
        return "the current Ray"
    address = address or os.environ.get("RAY_ADDRESS")
    if address is None:
        state = lc.read_state(config)
        if state is not None and state.gcs_address and lc.pid_alive(state.ray_pid):
            address = state.gcs_address
            os.environ.update(lc.ray_env(config))
    if address is not None:
        ray.init(address=address, log_to_driver=True)
        return f"Ray at {address}"
    os.environ.update(lc.ray_env(config))
    # Ray Train's controller watches its workers through the state API, which lives in the dashboard.
    ray.init(
        address="local",
        num_cpus=config.ray.num_cpus,
        include_dashboard=True,
        dashboard_port=config.ray.dashboard_port,
        _temp_dir=str(lc.ray_temp_dir(config)),
    )
    return "a private local Ray"


def run(
    cfg: TrainConfig,
    config: Config,
    *,
    address: str | None = None,
    job_id: str | None = None,
    say: Callable[[str], None] = print,
) -> JobResult:
    """Run a recipe to a published adapter (or saved model), traced as `train {run}` when tracing is on:
    the workers' data loading, epochs, evaluations and checkpoint saves are its children."""
    tracing.setup_tracing(config.telemetry.tracing, "train-driver")
    with tracing.tracer().start_as_current_span(
        f"train {cfg.name}",
        attributes={
            "llm_serve.train.run": cfg.name,
            "llm_serve.train.base_model": cfg.base_model,
            "llm_serve.train.method": cfg.method.kind,
            "llm_serve.train.workers": cfg.scaling.num_workers,
            "llm_serve.train.job_id": job_id or submission_id() or cfg.name,
        },
    ) as span:
        trace_id = tracing.trace_id_of(span)
        if trace_id:
            say(f"trace id: {trace_id}")
        from train.tracking import TrainingRun

        tracked = TrainingRun(config, say)
        tracked.start(cfg, job_id or submission_id() or cfg.name, project_path(cfg.data.path))
        try:
            try:
                result = _run(cfg, config, address=address, job_id=job_id, say=say)
            except BaseException:
                tracked.fail()
                raise
            tracked.finish(result, cfg.output.registry or default_registry(config))
            span.set_attributes(
                {k: v for k, v in _span_metrics(result.metrics).items() if isinstance(v, int | float | str)}
            )
            if result.adapter is not None:
                span.set_attribute("llm_serve.adapter", result.adapter.model_id)
            return result
        finally:
            tracing.flush()


def _span_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    return {f"llm_serve.train.{k}": v for k, v in metrics.items() if v is not None}


def _run(
    cfg: TrainConfig,
    config: Config,
    *,
    address: str | None,
    job_id: str | None,
    say: Callable[[str], None],
) -> JobResult:
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from llm_serve.models import resolve_model_source
    from train.data import dataset_hash

    started = time.monotonic()
    preflight(cfg)
    model_dir = resolve_model_source(cfg.base_model, config.home_path, pull=True)
    say(f"training {cfg.name}: {cfg.method.kind} on {cfg.base_model} ({model_dir}), {cfg.scaling.num_workers} workers")
    say(f"running on {connect(config, address)}")
    storage = cfg.checkpoint.storage_path or str(config.home_path / "train-runs")
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": cfg.model_dump(mode="json"),
            "model_dir": str(model_dir),
            "tracing": config.telemetry.tracing.model_dump(mode="json") if tracing.enabled() else None,
            "trace": tracing.carrier(),
        },
        scaling_config=ScalingConfig(
            num_workers=cfg.scaling.num_workers,
            use_gpu=cfg.scaling.use_gpu,
            resources_per_worker=dict(cfg.scaling.resources_per_worker),
        ),
        torch_config=TorchConfig(backend="nccl" if cfg.scaling.use_gpu else "gloo"),
        run_config=RunConfig(
            name=cfg.name,
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.checkpoint.num_to_keep),
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"training run {cfg.name} finished without a checkpoint")
    with result.checkpoint.as_directory() as ckpt:
        ckpt_dir = Path(ckpt)
        history = [json.loads(x) for x in (ckpt_dir / HISTORY_FILE).read_text().splitlines() if x]
        adapter = model_path = None
        metadata = {
            "base_model": cfg.base_model,
            "base_model_id": cfg.served_base,
            "method": cfg.method.kind,
            "dataset": str(project_path(cfg.data.path)),
            "dataset_hash": dataset_hash(project_path(cfg.data.path)),
            "config": cfg.model_dump(mode="json"),
            "metrics": summary(history),
            "job_id": job_id or submission_id() or cfg.name,
            "run": cfg.name,
            "checkpoint": result.checkpoint.path,
        }
        if cfg.method.kind == "full":
            model_path = str(Path(storage) / cfg.name / "final-model")
            shutil.copytree(ckpt_dir / MODEL_DIR, model_path, dirs_exist_ok=True)
            say(f"full model saved to {model_path}")
        else:
            registry = AdapterRegistry(cfg.output.registry or default_registry(config))
            with tracing.tracer().start_as_current_span(
                "train.publish", attributes={"llm_serve.adapter": cfg.output.adapter_name}
            ):
                adapter = registry.publish(ckpt_dir / ADAPTER_DIR, cfg.output.adapter_name, metadata)
            say(f"adapter published: {adapter.model_id} in {registry.root}")
    return JobResult(
        metrics=summary(history),
        history=history,
        checkpoint_path=result.checkpoint.path,
        adapter=adapter,
        model_path=model_path,
        elapsed_s=time.monotonic() - started,
    )


def preflight(cfg: TrainConfig) -> None:
    """Fail on the driver, in one readable message, before any worker is scheduled."""
    from train.data import load_examples
    from train.trainer import deepspeed_config

    load_examples(project_path(cfg.data.path), cfg.data.format)  # raises DataError naming every bad line
    if cfg.data.eval_path:
        load_examples(project_path(cfg.data.eval_path), cfg.data.format)
    stage = deepspeed_config(cfg, cfg.scaling.num_workers, 1).get("zero_optimization", {}).get("stage", 0)
    if cfg.method.kind == "qlora" and stage == 3:
        raise ValueError("QLoRA's 4-bit weights cannot be partitioned by ZeRO-3; use configs/deepspeed/zero2.json")


def submission_id() -> str | None:
    """The `ray job submit` id when this driver runs as a submitted job (Ray passes it in the job config)."""
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    try:
        job_config = json.loads(os.environ.get(RAY_JOB_CONFIG_JSON_ENV_VAR) or "{}")
    except ValueError:
        return None
    return (job_config.get("metadata") or {}).get("job_submission_id")


def tokens_per_s(steps: list[dict[str, Any]]) -> float:
    """Total tokens over total step time: a mean of per-step rates would over-weight the short steps."""
    if all("tokens" in h and "step_s" in h for h in steps):
        return sum(h["tokens"] for h in steps) / max(sum(h["step_s"] for h in steps), 1e-9)
    return sum(h["tokens_per_s"] for h in steps) / len(steps)  # histories written before the totals were logged


def summary(history: list[dict[str, Any]]) -> dict[str, Any]:
    if not history:
        return {}
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    timed = history[1:] or history  # the first step carries start-up (allocation, first kernels)
    return {
        "steps": history[-1]["step"],
        "first_loss": history[0]["loss"],
        "final_loss": history[-1]["loss"],
        "eval_loss": evals[-1] if evals else None,
        "tokens_per_s": tokens_per_s(timed),
    }
