"""Training jobs through `ray job submit` on a Ray cluster of the test's own, with a tiny model.

The cluster is a private `ray start --head` (own ports, own temp dir, token auth off for it and its
client) stopped by PID at the end. Three jobs run on it: 2 steps, the same run continued to 4 steps
(it resumes from its checkpoint), and a fresh 4-step run: the resumed run must match the fresh one
loss for loss, which shows both the resume and the fixed seed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from llm_serve import local_cluster as lc
from llm_serve.adapters import METADATA_FILE
from llm_serve.config import parse_config
from tests.tiny_model import build_tiny_llama

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
JOB_TIMEOUT_S = 600


def wait_for_dashboard(port: int, token: str, timeout_s: float = 180) -> None:
    """Job submission goes through the dashboard, which comes up after the GCS (later still on a busy machine)
    and, with Ray's token auth on, answers only requests that carry the token."""
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/version", headers={"authorization": f"Bearer {token}"}
    )
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"the test cluster's dashboard did not answer on {port} within {timeout_s} s")


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict]:
    temp = Path(tempfile.mkdtemp(prefix="lsj-"))  # short: Ray's socket paths must fit 107 bytes
    config = parse_config(
        {
            "home": str(temp / "home"),
            "ray": {
                "num_cpus": 6,
                "gcs_port": 6431,
                "dashboard_port": 8315,
                "dashboard_agent_listen_port": 52415,
                "metrics_export_port": 8398,
                "min_worker_port": 24000,
                "max_worker_port": 24999,
                "temp_dir": str(temp / "ray"),
            },
            "server": {"port": 8041},
        }
    )
    head = lc.start_head(config, temp / "ray-head.log")
    wait_for_dashboard(config.ray.dashboard_port, lc.auth_token_path(config).read_text().strip())
    env = {
        **os.environ,
        **lc.ray_env(config),
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_ADDRESS": f"http://127.0.0.1:{config.ray.dashboard_port}",
        "LLM_SERVE_HOME": str(temp / "home"),
    }
    try:
        yield {"env": env, "temp": temp}
    finally:
        lc.stop_tree(head.pid)


@pytest.fixture(scope="module")
def tiny(cluster) -> Path:
    return build_tiny_llama(cluster["temp"] / "tiny-llama")


def recipe(cluster, tiny: Path, name: str, steps: int, adapter: str, **overrides: object) -> Path:
    temp = cluster["temp"]
    data: dict = {
        "name": name,
        "base_model": str(tiny),
        "base_model_id": "tiny",
        "seed": 7,
        "data": {"path": "data/faq/train.jsonl", "eval_path": "data/faq/eval.jsonl", "max_length": 512},
        "method": {
            "kind": "lora",
            "lora": {"r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["q_proj", "v_proj"]},
        },
        "optim": {"learning_rate": 0.01, "max_steps": steps, "micro_batch_size": 2},
        "scaling": {"num_workers": 2},
        "checkpoint": {"storage_path": str(temp / "runs"), "every_n_steps": 2},
        "output": {"adapter_name": adapter, "registry": str(temp / "adapters")},
    }
    data.update(overrides)
    path = temp / f"{name}-{steps}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def submit(cluster, recipe_path: Path) -> str:
    proc = subprocess.run(
        [
            "ray",
            "job",
            "submit",
            "--working-dir",
            ".",
            # The job's driver gets the test's home (its MLflow store), not the one of whoever runs the suite.
            "--runtime-env-json",
            json.dumps({"env_vars": {"LLM_SERVE_HOME": cluster["env"]["LLM_SERVE_HOME"]}}),
            "--",
            "llm-serve",
            "train",
            "--config",
            str(recipe_path),
        ],
        cwd=ROOT,
        env=cluster["env"],
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT_S,
    )
    assert proc.returncode == 0 and "succeeded" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def history(cluster, adapter: str) -> tuple[dict, list[dict]]:
    meta = json.loads((cluster["temp"] / "adapters" / adapter / METADATA_FILE).read_text())
    lines = (Path(meta["checkpoint"]) / "metrics.jsonl").read_text().splitlines()
    return meta, [json.loads(x) for x in lines]


def test_jobs_submit_resume_and_repeat(cluster, tiny) -> None:
    first = submit(cluster, recipe(cluster, tiny, "resumable", 2, "part"))
    assert "adapter published: tiny:part" in first
    resumed = submit(cluster, recipe(cluster, tiny, "resumable", 4, "resumed"))
    assert "resumed from step 2" in resumed
    fresh = submit(cluster, recipe(cluster, tiny, "fresh", 4, "fresh"))
    assert "resumed" not in fresh

    meta, resumed_steps = history(cluster, "resumed")
    _, fresh_steps = history(cluster, "fresh")
    assert [h["step"] for h in resumed_steps] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed_steps] == pytest.approx([h["loss"] for h in fresh_steps], rel=1e-5)
    assert all(h["tokens_per_s"] > 0 and h["learning_rate"] > 0 for h in resumed_steps)
    assert "eval_loss" in resumed_steps[-1]
    # The published adapter carries its provenance.
    assert meta["base_model_id"] == "tiny" and meta["method"] == "lora" and len(meta["dataset_hash"]) == 16
    assert meta["job_id"].startswith("raysubmit_") and meta["metrics"]["steps"] == 4
    registry = cluster["temp"] / "adapters" / "resumed"
    assert (registry / "adapter_config.json").is_file() and (registry / "adapter_model.safetensors").is_file()
    assert_tracked(resumed, meta, resumed_steps, cluster["env"]["LLM_SERVE_HOME"])


def assert_tracked(job_log: str, meta: dict, steps: list[dict], cluster_home: str) -> None:
    """The submitted job logged itself to MLflow: recipe, every step's metrics, the published adapter."""
    from mlflow import MlflowClient

    found = re.search(r"mlflow: run (\w+) in experiment 'llm-serve-training' at (\S+)", job_log)
    assert found, job_log[-3000:]
    run_id, uri = found.groups()
    assert uri == f"sqlite:///{Path(cluster_home) / 'mlflow' / 'mlflow.db'}"  # the job ran with the test's home
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "resumable"
    assert run.data.params["optim.max_steps"] == "4" and run.data.params["method.lora.r"] == "4"
    assert run.data.params["job_id"] == meta["job_id"] and run.data.params["dataset_hash"] == meta["dataset_hash"]
    assert run.data.tags["llm_serve.adapter"] == "tiny:resumed"
    losses = client.get_metric_history(run_id, "loss")
    assert [(m.step, m.value) for m in losses] == [(h["step"], pytest.approx(h["loss"])) for h in steps]
    artifacts = {a.path for a in client.list_artifacts(run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= artifacts


def test_full_fine_tuning_under_zero3(cluster, tiny) -> None:
    out = submit(
        cluster,
        recipe(
            cluster,
            tiny,
            "full-zero3",
            2,
            "unused",
            method={"kind": "full"},
            deepspeed={"config": "configs/deepspeed/zero3.json"},
            # 3 eval rows on 2 ranks: uneven shares must not hang ZeRO-3's collective forwards.
            data={"path": "data/faq/train.jsonl", "eval_fraction": 0.075, "max_length": 512},
            optim={"learning_rate": 0.0001, "max_steps": 2, "micro_batch_size": 2},
        ),
    )
    assert "full model saved to" in out
    model_dir = cluster["temp"] / "runs" / "full-zero3" / "final-model"
    assert (model_dir / "config.json").is_file() and (model_dir / "model.safetensors").is_file()
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    assert all(t.numel() > 0 for t in weights.values()), "ZeRO-3 shards were gathered before saving"
