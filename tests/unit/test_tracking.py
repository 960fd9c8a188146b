"""MLflow tracking without a server: prompt versions registered on lock, training jobs as runs, the URI rule.

Everything is read back with MLflow's own client from the SQLite store that was written, the way a
user's `mlflow ui --backend-store-uri sqlite:///...` would read it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llm_serve.adapters import AdapterInfo
from llm_serve.cli import main
from llm_serve.config import TrackingConfig, parse_config
from llm_serve.prompts.registry import PromptRegistry
from llm_serve.tracking import Tracker, default_uri, resolve_uri
from train.config import TrainConfig
from train.job import JobResult
from train.tracking import TrainingRun, flatten

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ROOT / "configs" / "prompts"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def client(store: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store, registry_uri=store)


def test_the_uri_rule(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_uri(TrackingConfig(), tmp_path) == default_uri(tmp_path) == f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_uri(TrackingConfig(), tmp_path) == "http://127.0.0.1:5000"
    assert resolve_uri(TrackingConfig(uri="sqlite:////x.db"), tmp_path) == "sqlite:////x.db"  # the file wins
    assert resolve_uri(TrackingConfig(uri="sqlite:////x.db"), tmp_path, "file:///y") == "file:///y"  # the flag more


def test_lock_registers_every_version_once(
    store: str, client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LLM_SERVE_CONFIG", raising=False)
    prompts = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    assert main(["prompts", "lock", "--dir", str(prompts), "--tracking-uri", store]) == 0
    assert "support-answer@2 -> prompts:/support-answer/2" in capsys.readouterr().err

    registry = PromptRegistry.load(prompts)
    v2 = registry.get("support-answer", "2")
    loaded = client.load_prompt("prompts:/support-answer/2")
    assert loaded.template == [dict(m) for m in v2.messages or ()]  # a chat prompt, as messages
    assert loaded.tags["llm_serve.hash"] == v2.content_hash and loaded.tags["llm_serve.ref"] == v2.ref
    triage = client.load_prompt("prompts:/ticket-triage/1")
    assert triage.response_format == registry.get("ticket-triage", "1").output_schema  # the answer's contract

    # Locking again adds nothing; a new version is registered as the next MLflow version.
    new = prompts / "support-answer" / "3.yaml"
    text = (prompts / "support-answer" / "2.yaml").read_text().replace("version: 2", "version: 3")
    new.write_text(text.replace("{{ question }}", "Question: {{ question }}"))
    assert main(["prompts", "lock", "--dir", str(prompts), "--tracking-uri", store]) == 0
    assert main(["prompts", "lock", "--dir", str(prompts), "--tracking-uri", store]) == 0
    versions = sorted(int(v.version) for v in client.search_prompt_versions("support-answer"))
    assert versions == [1, 2, 3]
    assert client.load_prompt("prompts:/support-answer/3").tags["llm_serve.version"] == "3"


def test_lock_without_tracking_touches_no_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prompts = Path(shutil.copytree(PROMPTS, tmp_path / "prompts"))
    uri = f"sqlite:///{tmp_path / 'never.db'}"
    assert main(["prompts", "lock", "--dir", str(prompts), "--no-tracking", "--tracking-uri", uri]) == 0
    assert not (tmp_path / "never.db").exists() and "mlflow" not in capsys.readouterr().err


def _result(tmp_path: Path) -> JobResult:
    adapter_dir = tmp_path / "adapters" / "faq"
    adapter_dir.mkdir(parents=True)
    (adapter_dir / "adapter_config.json").write_text('{"r": 8}')
    history = [
        {"step": 1, "loss": 2.5, "tokens_per_s": 100.0, "learning_rate": 1e-4},
        {"step": 2, "loss": 2.0, "tokens_per_s": 110.0, "learning_rate": 1e-4},
        {"step": 3, "loss": 1.5, "tokens_per_s": 120.0, "learning_rate": 1e-4, "eval_loss": 1.7},
    ]
    return JobResult(
        metrics={"steps": 3, "final_loss": 1.5, "eval_loss": 1.7, "tokens_per_s": 115.0},
        history=history,
        checkpoint_path=str(tmp_path / "ckpt"),
        adapter=AdapterInfo("faq", "smollm2-135m-instruct", str(adapter_dir), {}),
        model_path=None,
        elapsed_s=12.5,
    )


def test_a_training_job_is_a_run_with_its_recipe_steps_and_adapter(store: str, client, tmp_path: Path) -> None:
    config = parse_config({"home": str(tmp_path / "home"), "tracking": {"uri": store}})
    cfg = TrainConfig.model_validate(
        {
            "name": "faq-lora",
            "base_model": "smollm2-135m-instruct",
            "data": {"path": "data/faq/train.jsonl"},
            "output": {"adapter_name": "faq"},
        }
    )
    lines: list[str] = []
    run = TrainingRun(config, lines.append)
    run.start(cfg, "raysubmit_123", ROOT / "data" / "faq" / "train.jsonl")
    run.finish(_result(tmp_path), str(tmp_path / "adapters"))
    assert any(line.startswith("mlflow: logged 10 step metric point(s)") for line in lines), lines

    got = client.get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.info.run_name == "faq-lora"
    params = got.data.params
    assert params["method.kind"] == "lora" and params["method.lora.r"] == "8" and params["job_id"] == "raysubmit_123"
    assert len(params["dataset_hash"]) == 16 and params["adapter"] == "smollm2-135m-instruct:faq"
    assert got.data.tags["llm_serve.adapter"] == "smollm2-135m-instruct:faq"
    assert [(m.step, m.value) for m in client.get_metric_history(run.run_id, "loss")] == [(1, 2.5), (2, 2.0), (3, 1.5)]
    assert [m.step for m in client.get_metric_history(run.run_id, "eval_loss")] == [3]
    assert got.data.metrics["final.final_loss"] == 1.5 and got.data.metrics["elapsed_s"] == 12.5
    assert [a.path for a in client.list_artifacts(run.run_id, "adapter")] == ["adapter/adapter_config.json"]


def test_a_failed_job_is_marked_failed_and_tracking_off_does_nothing(store: str, client, tmp_path: Path) -> None:
    config = parse_config({"home": str(tmp_path / "home"), "tracking": {"uri": store}})
    cfg = TrainConfig.model_validate(
        {"name": "broken", "base_model": "m", "data": {"path": "missing.jsonl"}, "output": {"adapter_name": "x"}}
    )
    run = TrainingRun(config, lambda _: None)
    run.start(cfg, "job", tmp_path / "missing.jsonl")
    run.fail()
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.data.params["dataset_hash"] == "unreadable"

    off = TrainingRun(parse_config({"home": str(tmp_path / "h2"), "tracking": {"enabled": False}}), print)
    off.start(cfg, "job", tmp_path / "missing.jsonl")
    assert off.tracker is None and off.run_id is None and not (tmp_path / "h2").exists()


def test_flatten_and_long_params(store: str, client) -> None:
    assert dict(flatten({"a": {"b": {"c": 1}, "d": []}, "e": "x"})) == {"a.b.c": 1, "a.d": [], "e": "x"}
    tracker = Tracker(store, "/tmp/unused")
    run_id = tracker.start_run("limits", "long")
    tracker.log(run_id, params={"long": "x" * 10000, "list": [1, 2]}, metrics={f"m{i}": i for i in range(1500)})
    tracker.end(run_id)
    got = client.get_run(run_id).data
    assert len(got.params["long"]) == 6000 and got.params["list"] == "[1, 2]" and len(got.metrics) == 1500
