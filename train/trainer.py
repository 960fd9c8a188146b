"""The training loop each Ray Train worker runs: PEFT LoRA (or full) under DeepSpeed ZeRO.

One loop, no trainer framework: data order, adapter init and dropout come from the seed, every
optimizer step reports loss, learning rate and tokens/s, and checkpoints carry the DeepSpeed state
of every rank plus the adapter, so a run that stops resumes at the step it reached with the same
data order. Everything heavy is imported inside the worker: the driver needs none of it.
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from llm_serve.telemetry import tracing
from train.config import TrainConfig, project_path

STATE_FILE = "trainer_state.json"
HISTORY_FILE = "metrics.jsonl"
ADAPTER_DIR = "adapter"
MODEL_DIR = "model"
DS_TAG = "ds"


def deepspeed_config(cfg: TrainConfig, world_size: int, total_steps: int) -> dict[str, Any]:
    """The DeepSpeed JSON with everything the recipe decides filled in (batch sizes, optimizer, schedule)."""
    ds = json.loads(project_path(cfg.deepspeed.config).read_text())
    optim = cfg.optim
    ds["train_micro_batch_size_per_gpu"] = optim.micro_batch_size
    ds["gradient_accumulation_steps"] = optim.gradient_accumulation_steps
    ds["train_batch_size"] = optim.micro_batch_size * optim.gradient_accumulation_steps * world_size
    ds["gradient_clipping"] = optim.max_grad_norm
    ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    ds["optimizer"].setdefault("params", {}).update(lr=optim.learning_rate, weight_decay=optim.weight_decay)
    if not cfg.scaling.use_gpu:
        ds["optimizer"]["params"]["torch_adam"] = True  # FusedAdam would compile a C++ op first (~100 s)
    ds["scheduler"] = {
        "type": "WarmupDecayLR",
        "params": {
            # DeepSpeed's warm-up starts at warmup_min_lr on step 0: with no warm-up, start at full rate.
            "warmup_min_lr": 0.0 if optim.warmup_steps else optim.learning_rate,
            "warmup_max_lr": optim.learning_rate,
            "warmup_num_steps": max(1, optim.warmup_steps),
            "warmup_type": "linear",
            "total_num_steps": max(total_steps, optim.warmup_steps + 1),
        },
    }
    ds["bf16"] = {"enabled": cfg.dtype == "bfloat16"}
    if cfg.deepspeed.offload_optimizer is not None:
        zero = ds.setdefault("zero_optimization", {})
        if cfg.deepspeed.offload_optimizer:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
        else:
            zero.pop("offload_optimizer", None)
    return ds


def schedule(n_rows: int, world: int, cfg: TrainConfig) -> tuple[int, int]:
    """(micro-batches per epoch per rank, optimizer steps in total)."""
    per_rank = n_rows // world
    micro = max(1, per_rank // cfg.optim.micro_batch_size)
    # Accumulation windows run across epoch ends, so count steps over all epochs' micro-batches.
    total = cfg.optim.max_steps or max(1, micro * cfg.optim.epochs // cfg.optim.gradient_accumulation_steps)
    return micro, total


def epoch_order(n_rows: int, epoch: int, seed: int, rank: int, world: int) -> list[int]:
    """This rank's rows for an epoch: one seeded shuffle shared by all ranks, then strided (equal lengths)."""
    order = list(range(n_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    per_rank = n_rows // world
    return order[rank::world][:per_rank]


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """One Ray Train worker: the training loop inside a span that continues the driver's trace."""
    import ray.train
    from opentelemetry import trace

    tracing.setup_tracing(loop_config.get("tracing"), "train-worker")
    ctx = ray.train.get_context()
    span = tracing.tracer().start_span(
        f"train.worker {ctx.get_world_rank()}",
        context=tracing.context_from(loop_config.get("trace")),
        attributes={"llm_serve.train.rank": ctx.get_world_rank(), "llm_serve.train.world_size": ctx.get_world_size()},
    )
    try:
        with trace.use_span(span, end_on_exit=False, record_exception=True, set_status_on_exception=True):
            _train_loop(loop_config)
    finally:
        span.end()
        tracing.flush()


def _train_loop(loop_config: dict[str, Any]) -> None:
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not loop_config["config"]["scaling"]["use_gpu"] else "cuda")
    import numpy as np
    import ray.train
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import collate, count_tokens, load_examples, split, tokenize_all

    cfg = TrainConfig.model_validate(loop_config["config"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = torch.device("cuda", ctx.get_local_rank()) if cfg.scaling.use_gpu else torch.device("cpu")
    if not cfg.scaling.use_gpu:
        # A local `llm-serve up` confines Ray's processes to its serving core (ray.isolate_serving_cpus);
        # training is not serving: it gets every core of the machine back.
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, range(os.cpu_count() or 1))
        # Ray pins OMP_NUM_THREADS to the worker's CPU reservation (1); share the cores instead.
        torch.set_num_threads(cfg.scaling.torch_threads or max(1, (os.cpu_count() or 1) // world))
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    model_dir = loop_config["model_dir"]
    with tracing.tracer().start_as_current_span("train.data_load") as span:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        examples = load_examples(project_path(cfg.data.path), cfg.data.format)
        if cfg.data.eval_path:
            train_ex, eval_ex = examples, load_examples(project_path(cfg.data.eval_path), cfg.data.format)
        else:
            train_ex, eval_ex = split(examples, cfg.data.eval_fraction, cfg.seed)
        train_rows = tokenize_all(train_ex, tokenizer, cfg.data.max_length)
        eval_rows = tokenize_all(eval_ex, tokenizer, cfg.data.max_length)
        span.set_attributes({"llm_serve.train.rows": len(train_rows), "llm_serve.train.eval_rows": len(eval_rows)})
    if len(train_rows) < world * cfg.optim.micro_batch_size:
        raise ValueError(f"{len(train_rows)} training examples are fewer than workers x micro_batch_size")

    with tracing.tracer().start_as_current_span(
        "train.model_load", attributes={"llm_serve.train.method": cfg.method.kind}
    ):
        model = _build_model(cfg, model_dir, AutoModelForCausalLM, torch)
        micro_per_epoch, total_steps = schedule(len(train_rows), world, cfg)
        engine = _wrap(cfg, model, world, total_steps)

    step, start_micro, history = 0, 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            state = json.loads((Path(ckpt_dir) / STATE_FILE).read_text())
            engine.deepspeed.load_checkpoint(ckpt_dir, tag=DS_TAG)
            _load_rng(Path(ckpt_dir), rank)
            history = [json.loads(line) for line in (Path(ckpt_dir) / HISTORY_FILE).read_text().splitlines() if line]
        step, start_micro = state["step"], state["micro_step"]
        if rank == 0:
            print(f"[train] resumed from step {step}", flush=True)

    accum = cfg.optim.gradient_accumulation_steps
    micro_step = 0
    window_loss, window_tokens, window_started = 0.0, 0, time.perf_counter()
    done = step >= total_steps
    for epoch in range(math.ceil(total_steps * accum / micro_per_epoch) + 1):
        if done:
            break
        with tracing.tracer().start_as_current_span(f"train.epoch {epoch}") as epoch_span:
            order = epoch_order(len(train_rows), epoch, cfg.seed, rank, world)
            for b in range(micro_per_epoch):
                if micro_step < start_micro:  # replaying the data order up to the checkpoint
                    micro_step += 1
                    continue
                rows = [
                    train_rows[i] for i in order[b * cfg.optim.micro_batch_size : (b + 1) * cfg.optim.micro_batch_size]
                ]
                batch = {k: v.to(device) for k, v in collate(rows, pad_id).items()}
                loss = engine.train_micro(batch)
                window_loss += loss
                window_tokens += count_tokens(rows)
                micro_step += 1
                if micro_step % accum:
                    continue
                step += 1
                elapsed = time.perf_counter() - window_started
                # On the collective's device: NCCL (GPU runs) reduces CUDA tensors only.
                stats = torch.tensor([window_loss / accum, float(window_tokens)], dtype=torch.float64, device=device)
                dist.all_reduce(stats)
                metrics = {
                    "step": step,
                    "epoch": epoch,
                    "loss": float(stats[0]) / world,
                    "learning_rate": engine.lr(),
                    "tokens_per_s": float(stats[1]) / max(elapsed, 1e-9),
                    # Totals, so a run's rate is sum(tokens) / sum(step_s), as the benchmark's baseline computes it.
                    "tokens": int(stats[1]),
                    "step_s": elapsed,
                }
                window_loss, window_tokens = 0.0, 0
                last = step >= total_steps
                # The step that completes the epoch's last micro-batch, or the first one after it.
                epoch_end = (micro_step // micro_per_epoch) > ((micro_step - accum) // micro_per_epoch)
                if last or epoch_end:
                    with tracing.tracer().start_as_current_span(
                        "train.eval", attributes={"llm_serve.train.step": step}
                    ):
                        metrics["eval_loss"] = _eval_loss(engine, eval_rows, pad_id, rank, world, device, torch, dist)
                history.append(metrics)
                if rank == 0 and (step % cfg.log_every_steps == 0 or last):
                    extra = f" eval_loss {metrics['eval_loss']:.4f}" if "eval_loss" in metrics else ""
                    print(
                        f"[train] step {step}/{total_steps} epoch {epoch} loss {metrics['loss']:.4f} "
                        f"lr {metrics['learning_rate']:.2e} tokens/s {metrics['tokens_per_s']:.0f}{extra}",
                        flush=True,
                    )
                every = cfg.checkpoint.every_n_steps
                if last or (every and step % every == 0):
                    with tracing.tracer().start_as_current_span(
                        "train.checkpoint", attributes={"llm_serve.train.step": step, "llm_serve.train.final": last}
                    ):
                        _checkpoint(cfg, engine, metrics, history, step, micro_step, rank, tokenizer, last)
                else:
                    ray.train.report(metrics)
                window_started = time.perf_counter()  # evaluation and checkpoints are not training time
                if last:
                    done = True
                    break

            epoch_span.set_attributes({"llm_serve.train.epoch": epoch, "llm_serve.train.step": step})
            if history:
                epoch_span.set_attribute("llm_serve.train.loss", history[-1]["loss"])


class _Engine:
    """The few things the loop asks of the DeepSpeed engine."""

    def __init__(self, deepspeed_engine: Any) -> None:
        self.deepspeed = deepspeed_engine

    def train_micro(self, batch: dict[str, Any]) -> float:
        """Forward and backward; DeepSpeed steps the optimizer itself at accumulation boundaries."""
        loss = self.deepspeed(**batch).loss
        self.deepspeed.backward(loss)
        self.deepspeed.step()
        return float(loss.detach())

    def lr(self) -> float:
        """The rate the last step used (read from the optimizer: the scheduler warns when asked early)."""
        return float(self.deepspeed.optimizer.param_groups[0]["lr"])

    def forward(self, batch: dict[str, Any]) -> Any:
        return self.deepspeed(**batch)

    @property
    def module(self) -> Any:
        return self.deepspeed.module


def _build_model(cfg: TrainConfig, model_dir: str, auto_cls: Any, torch: Any) -> Any:
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    if cfg.method.kind == "qlora":
        if not torch.cuda.is_available():
            raise RuntimeError("QLoRA needs a CUDA GPU (4-bit weights through bitsandbytes); use method lora on CPU")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError("QLoRA needs bitsandbytes: pip install bitsandbytes") from exc
        from transformers import BitsAndBytesConfig

        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
        model = auto_cls.from_pretrained(model_dir, quantization_config=quant, torch_dtype=dtype)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model)
    else:
        model = auto_cls.from_pretrained(model_dir, torch_dtype=dtype)
    if cfg.method.kind in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lora = cfg.method.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lora.r,
                lora_alpha=lora.alpha,
                lora_dropout=lora.dropout,
                target_modules=lora.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    return model


def _wrap(cfg: TrainConfig, model: Any, world: int, total_steps: int) -> _Engine:
    import deepspeed

    params = [p for p in model.parameters() if p.requires_grad]
    engine, _optimizer, _, _scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=deepspeed_config(cfg, world, total_steps)
    )
    return _Engine(engine)


def _eval_loss(
    engine: _Engine, rows: list[dict], pad_id: int, rank: int, world: int, device: Any, torch: Any, dist: Any
):
    """Token-weighted mean loss over the eval split, each rank taking its stride of it."""
    from train.data import collate

    engine.module.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    # Every rank runs the same number of forwards (ZeRO-3 gathers weights collectively in each):
    # ranks short of rows repeat one with zero weight.
    per_rank = -(-len(rows) // world)
    with torch.no_grad():
        for i in range(per_rank):
            index = rank + i * world
            weight = 1.0 if index < len(rows) else 0.0
            batch = {k: v.to(device) for k, v in collate([rows[min(index, len(rows) - 1)]], pad_id).items()}
            n = int((batch["labels"][:, 1:] != -100).sum()) * weight
            loss = float(engine.forward(batch).loss)
            if n:
                total += torch.tensor([loss * n, n], dtype=torch.float64, device=device)
    engine.module.train()
    dist.all_reduce(total)
    return float(total[0] / total[1]) if total[1] else float("nan")


def _checkpoint(
    cfg: TrainConfig,
    engine: _Engine,
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    step: int,
    micro_step: int,
    rank: int,
    tokenizer: Any,
    final: bool,
) -> None:
    """Every rank writes its DeepSpeed shard; rank 0 adds the adapter (or model), the state and the history.

    Ray Train merges the ranks' directories into one checkpoint in the run's storage.
    """
    import ray.train
    from ray.train import Checkpoint

    with tempfile.TemporaryDirectory() as tmp:
        engine.deepspeed.save_checkpoint(tmp, tag=DS_TAG)
        _save_rng(Path(tmp), rank)
        _save_weights(cfg, engine, Path(tmp), rank, tokenizer)
        if rank == 0:
            (Path(tmp) / STATE_FILE).write_text(json.dumps({"step": step, "micro_step": micro_step, "final": final}))
            (Path(tmp) / HISTORY_FILE).write_text("".join(json.dumps(h) + "\n" for h in history))
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp), checkpoint_dir_name=f"step-{step:06d}")


def _save_rng(directory: Path, rank: int) -> None:
    """Dropout masks come from these generators: a resumed run must draw what the uninterrupted one would."""
    import numpy as np
    import torch

    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    torch.save(state, directory / f"rng_rank{rank}.pt")


def _load_rng(directory: Path, rank: int) -> None:
    import numpy as np
    import torch

    file = directory / f"rng_rank{rank}.pt"
    if file.is_file():
        state = torch.load(file, weights_only=False)
        torch.set_rng_state(state["torch"])
        np.random.set_state(state["numpy"])
        random.setstate(state["python"])


def _save_weights(cfg: TrainConfig, engine: _Engine, tmp: Path, rank: int, tokenizer: Any) -> None:
    import deepspeed

    module = engine.module
    stage = engine.deepspeed.zero_optimization_stage() or 0
    params = (
        [p for p in module.parameters() if p.requires_grad] if cfg.method.kind != "full" else list(module.parameters())
    )
    # ZeRO-3 keeps only a shard of each parameter per rank: gather them to save whole tensors.
    gather = deepspeed.zero.GatheredParameters(params, modifier_rank=None) if stage == 3 else nullcontext()
    with gather:
        if rank == 0:
            target = tmp / (MODEL_DIR if cfg.method.kind == "full" else ADAPTER_DIR)
            module.save_pretrained(str(target), safe_serialization=True)
            tokenizer.save_pretrained(str(target))
