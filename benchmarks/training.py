"""Training throughput of the Ray Train + DeepSpeed path against a plain PEFT loop, and the time from
`ray job submit` to the adapter answering through the endpoint.

1. Baseline: one process, no Ray, no DeepSpeed: the same model, data, tokenization, LoRA settings,
   optimizer and effective batch (micro batch x workers examples per step), all cores to torch.
2. llm-serve: a bench stack with LoRA serving is started (`llm-serve up`), the recipe is submitted
   to its Ray with `ray job submit --working-dir . -- llm-serve train ...`, and the endpoint is polled
   with the adapter's model id until it answers. Training tokens/s come from the job's per-step
   metrics (the first step, which includes warm-up, is left out of both sides).
Results: benchmarks/results/training.json and training.png.

    python benchmarks/training.py --recipe configs/train/faq-lora.yaml
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.report import RESULTS, machine, metric, write_report  # noqa: E402
from benchmarks.stack import BenchStack  # noqa: E402
from llm_serve.local_cluster import ray_env  # noqa: E402
from llm_serve.models import resolve_model_source  # noqa: E402
from train.config import TrainConfig, load_train_config, project_path  # noqa: E402
from train.job import tokens_per_s  # noqa: E402


def _log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def plain_loop(cfg: TrainConfig, model_dir: str) -> dict[str, Any]:
    """The reference: a textbook single-process PEFT loop over the same batches."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from train.data import collate, count_tokens, load_examples, tokenize_all
    from train.trainer import epoch_order, schedule

    torch.set_num_threads(os.cpu_count() or 1)
    torch.manual_seed(cfg.seed)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    rows = tokenize_all(load_examples(project_path(cfg.data.path)), tokenizer, cfg.data.max_length)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    lora = cfg.method.lora
    model = get_peft_model(
        model,
        LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
    )
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.optim.learning_rate, weight_decay=0.0
    )
    world = cfg.scaling.num_workers
    micro_per_epoch, total = schedule(len(rows), world, cfg)
    per_step = cfg.optim.micro_batch_size * world  # the effective batch of the distributed run
    step_times, step_tokens, losses = [], [], []
    step = 0
    for epoch in range(cfg.optim.epochs + 1):
        # The union of every rank's rows for each step: the same examples the workers see together.
        orders = [epoch_order(len(rows), epoch, cfg.seed, r, world) for r in range(world)]
        for b in range(micro_per_epoch):
            if step >= total:
                break
            mb = cfg.optim.micro_batch_size
            batch_rows = [rows[i] for order in orders for i in order[b * mb : (b + 1) * mb]]
            assert len(batch_rows) == per_step
            started = time.perf_counter()
            batch = collate(batch_rows, pad_id)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
            step_times.append(time.perf_counter() - started)
            step_tokens.append(count_tokens(batch_rows))
            losses.append(float(loss.detach()))
            step += 1
            print(f"\r  plain loop step {step}/{total} loss {losses[-1]:.3f}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    rate = sum(step_tokens[1:]) / sum(step_times[1:])
    return {"steps": step, "tokens_per_s": rate, "first_loss": losses[0], "final_loss": losses[-1]}


def answers(stack: BenchStack, model: str) -> bool:
    """Whether the endpoint answers `model` (an adapter is servable once this is true)."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}).encode()
    req = urllib.request.Request(
        f"{stack.url}/v1/chat/completions", data=body, headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status == 200
    except OSError:
        return False


def submit_and_serve(stack: BenchStack, recipe: Path, adapter: str) -> dict[str, Any]:
    env = {
        **stack.env,
        "RAY_ADDRESS": f"http://127.0.0.1:{stack.config.ray.dashboard_port}",
        **ray_env(stack.config),  # the bench stack's Ray wants its token
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    started = time.monotonic()
    proc = subprocess.run(
        ["ray", "job", "submit", "--working-dir", ".", "--", "llm-serve", "train", "--config", str(recipe)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
    )
    job_done = time.monotonic()
    if proc.returncode != 0:
        raise RuntimeError(proc.stdout[-3000:] + proc.stderr[-3000:])
    model_id = f"{stack.model}:{adapter}"
    while not answers(stack, model_id):
        if time.monotonic() - job_done > 300:
            raise TimeoutError(f"{model_id} not served 300 s after the job finished")
        time.sleep(0.5)
    answered = time.monotonic()
    return {
        "submit_to_answer_s": answered - started,
        "job_s": job_done - started,
        "publish_to_answer_s": answered - job_done,
        "stdout_tail": proc.stdout[-1500:],
    }


def read_history(stack: BenchStack, adapter: str) -> list[dict[str, Any]]:
    registry = stack.config.home_path / "adapters" / adapter / "llm_serve_adapter.json"
    meta = json.loads(registry.read_text())
    return [json.loads(x) for x in (Path(meta["checkpoint"]) / "metrics.jsonl").read_text().splitlines() if x]


def plot(ours: float, base: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(["plain PEFT loop\n(1 process)", "Ray Train + DeepSpeed\nZeRO-2 (2 workers)"], [base, ours])
    ax.set_ylabel("training tokens/s")
    ax.set_title("LoRA fine-tuning throughput, same data and batch")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="configs/train/faq-lora.yaml")
    args = parser.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base_recipe = load_train_config(args.recipe)
    adapter = f"bench-{uuid.uuid4().hex[:6]}"
    data = base_recipe.model_dump(mode="json")
    data["name"] = f"bench-{adapter}"
    data["output"]["adapter_name"] = adapter
    recipe = Path(tempfile.mkdtemp()) / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(data))
    cfg = TrainConfig.model_validate(data)

    stack = BenchStack(env, lambda d: d["models"][0].update(lora={"enabled": True, "refresh_s": 1}))
    model_dir = str(resolve_model_source(cfg.base_model, stack.config.home_path, pull=True))
    _log("starting llm-serve with LoRA serving")
    stack.start()
    try:
        # The baseline runs with the (idle) stack up too: both sides share the cores with it.
        _log("baseline: plain single-process PEFT loop")
        base = plain_loop(cfg, model_dir)
        _log(f"baseline: {base['tokens_per_s']:.0f} tokens/s")
        _log("ray job submit ... llm-serve train; then polling the endpoint for the adapter")
        served = submit_and_serve(stack, recipe, adapter)
        history = read_history(stack, adapter)
    finally:
        stack.stop()
    ours = tokens_per_s(history[1:])  # total tokens over total step time, as the baseline computes it
    metrics = {
        "training_tokens_per_s": metric(ours, "tok/s", True, "plain-peft-loop", base["tokens_per_s"]),
        "submit_to_adapter_answer_s": metric(served["submit_to_answer_s"], "s", False),
        "job_wall_s": metric(served["job_s"], "s", False),
        "publish_to_first_answer_s": metric(served["publish_to_answer_s"], "s", False),
        "final_train_loss": metric(history[-1]["loss"], "loss", False, "plain-peft-loop", base["final_loss"]),
    }
    report = {
        "scenario": "training",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(),
        "command": "python benchmarks/training.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "metrics": metrics,
        "details": {"baseline": base, "history": history, "job_stdout_tail": served["stdout_tail"]},
        "notes": (
            f"{cfg.method.kind} r={cfg.method.lora.r} on {cfg.base_model}, fp32, {cfg.optim.epochs} epochs, "
            f"micro batch {cfg.optim.micro_batch_size} x {cfg.scaling.num_workers} workers = "
            f"{cfg.optim.micro_batch_size * cfg.scaling.num_workers} examples per step on both sides, both measured "
            "with the idle llm-serve stack up. Baseline: "
            f"one process, torch on all {os.cpu_count()} cores, AdamW, no Ray, no DeepSpeed. llm-serve: Ray Train "
            f"TorchTrainer, {cfg.scaling.num_workers} workers (gloo), DeepSpeed {Path(cfg.deepspeed.config).name}, "
            "submitted with `ray job submit --working-dir .` to the running bench stack, which served the "
            "published adapter without a restart; submit-to-answer includes job start, Ray Train start-up, "
            "DeepSpeed init, training, checkpointing, publishing and the first adapter load in vLLM."
        ),
    }
    write_report(report)
    plot(ours, base["tokens_per_s"], RESULTS / "training.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
