"""Cluster files: generated from the config (the committed ones are what a render writes now), valid against
the KubeRay, Prometheus-operator, Kubernetes, Ray Serve and Ray launcher schemas, and sized from the pools."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from llm_serve.cli import main
from llm_serve.cluster.kuberay import PLACEHOLDER, gpu_groups, manifests
from llm_serve.cluster.launcher import ray_cluster
from llm_serve.cluster.render import render_files
from llm_serve.cluster.serve_config import LEDGER_URL_ENV
from llm_serve.cluster.validate import validate_file, validate_launcher, validate_object
from llm_serve.config import parse_config

ROOT = Path(__file__).resolve().parents[2]
GPU_CONFIG = "configs/gpu.yaml"


def _gpu() -> tuple[dict, object]:
    raw = yaml.safe_load((ROOT / GPU_CONFIG).read_text())
    return raw, parse_config(raw, origin=GPU_CONFIG)


def test_committed_cluster_files_are_what_the_config_renders() -> None:
    """cluster/ never drifts from configs/gpu.yaml: change the config, run the render, commit both."""
    raw, config = _gpu()
    for rel, text in render_files(raw, config, GPU_CONFIG).items():
        committed = ROOT / "cluster" / rel
        assert committed.is_file(), f"{rel} is rendered but not committed"
        assert committed.read_text() == text, f"cluster/{rel} differs: `llm-serve cluster render --config {GPU_CONFIG}`"


def test_every_committed_file_is_valid(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "validate", str(ROOT / "cluster")]) == 0
    assert "8 files, 0 problems" in capsys.readouterr().err


def _objects(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ROOT / "cluster" / "kuberay" / name).read_text()) if d]


HEAD = ("spec", "rayClusterConfig", "headGroupSpec")
WORKER = ("spec", "rayClusterConfig", "workerGroupSpecs", 0)


@pytest.mark.parametrize(
    ("file", "kind", "path", "field", "value", "expected"),
    [
        ("rayservice.yaml", "RayService", HEAD, "rayStartParms", {}, "'rayStartParms' was unexpected"),
        ("rayservice.yaml", "RayService", WORKER, "maxReplicas", "four", "'four' is not of type 'integer'"),
        ("rayjob-train.yaml", "RayJob", ("spec",), "shutdownAfterJobFinish", True, "was unexpected"),
        ("backing-services.yaml", "StatefulSet", ("spec",), "replica", 1, "'replica' was unexpected"),
        ("backing-services.yaml", "Service", ("spec", "ports", 0), "port", "x", "x"),
        (
            "monitoring.yaml",
            "ServiceMonitor",
            ("spec", "endpoints", 0),
            "intervall",
            "1s",
            "'intervall' was unexpected",
        ),
        ("secrets.yaml", "Secret", (), "stringdata", {}, "stringdata"),
    ],
)
def test_a_wrong_field_is_caught(file: str, kind: str, path: tuple, field: str, value: object, expected: str) -> None:
    obj = copy.deepcopy(next(o for o in _objects(file) if o["kind"] == kind))
    assert validate_object(obj) == []
    target = obj
    for step in path:
        target = target[step]
    target[field] = value
    problems = validate_object(obj)
    assert problems and expected in problems[0], problems


def test_the_serve_config_inside_the_rayservice_is_checked_as_llm_serve_reads_it() -> None:
    service = next(o for o in _objects("rayservice.yaml") if o["kind"] == "RayService")
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = serve["applications"][0]
    assert app["import_path"] == "llm_serve.app:app_builder"
    inner = app["args"]["config_dict"]
    assert inner["ray"]["address"] == "auto" and inner["ledger"]["url_env"] == LEDGER_URL_ENV
    assert inner["rag"]["milvus"]["uri"].startswith("http://llm-serve-milvus.llm-serve.svc")
    assert "cluster" not in inner
    inner["router"]["num_replica"] = 2
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    (problem,) = validate_object(service)
    assert "router.num_replica" in problem
    serve["applications"][0]["route_prefix"] = 7
    service["spec"]["serveConfigV2"] = yaml.safe_dump(serve)
    assert "route_prefix" in validate_object(service)[0]


def test_gpu_groups_fit_the_largest_replica_and_every_replica_of_their_pools() -> None:
    _, config = _gpu()
    groups = {g["groupName"]: g for g in gpu_groups(config)}
    assert set(groups) == {"gpu-a100", "gpu-l4"}
    a100 = groups["gpu-a100"]  # tensor_parallel_size 2, max_replicas 4
    assert a100["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert (a100["minReplicas"], a100["maxReplicas"]) == (0, 4)
    assert groups["gpu-l4"]["maxReplicas"] == 2
    cpu_only = parse_config({"models": [{"id": "m", "source": "s"}]})
    assert gpu_groups(cpu_only) == []


def test_the_secret_names_every_key_and_carries_no_value() -> None:
    raw, config = _gpu()
    (secret,) = manifests(raw, config)["secrets.yaml"]
    data = secret["stringData"]
    assert {"LLM_SERVE_ADMIN_KEY", "TEAM_A_KEY", "POSTGRES_PASSWORD", LEDGER_URL_ENV} <= set(data)
    assert all(v == PLACEHOLDER or f":{PLACEHOLDER}@" in v for v in data.values())


def test_launcher_node_types_hold_whole_replicas() -> None:
    _, config = _gpu()
    launcher = ray_cluster(config)
    assert validate_launcher(launcher) == []
    a100 = launcher["available_node_types"]["gpu-a100"]
    assert a100["resources"] == {"GPU": 8, "accelerator_type:A100": 1} and a100["max_workers"] == 1  # 4 x 2 GPUs
    bad = copy.deepcopy(launcher)
    bad["available_node_types"]["cpu"]["min_worker"] = 1
    assert validate_launcher(bad)
    small = config.model_copy(deep=True)
    small.cluster.launcher.gpu_instance_types["A100"].gpus = 1
    with pytest.raises(ValueError, match="a A100 replica needs 2"):
        ray_cluster(small)


def test_render_writes_and_validates(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["cluster", "render", "--config", str(ROOT / GPU_CONFIG), "--out", str(tmp_path)]) == 0
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.yaml")) == sorted(
        render_files(*_gpu(), GPU_CONFIG)
    )
    assert all(validate_file(p) == [] for p in tmp_path.rglob("*.yaml"))
    assert main(["cluster", "render"]) == 2
    assert "give the config" in capsys.readouterr().err


def test_ledger_url_comes_from_the_secret_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ledger = parse_config({"ledger": {"url": "sqlite:///x.db", "url_env": "LEDGER_URL_TEST"}}).ledger
    monkeypatch.delenv("LEDGER_URL_TEST", raising=False)
    assert ledger.database_url(tmp_path) == "sqlite:///x.db"
    monkeypatch.setenv("LEDGER_URL_TEST", "postgresql+psycopg://u:p@db/l")
    assert ledger.database_url(tmp_path) == "postgresql+psycopg://u:p@db/l"
    assert parse_config({}).ledger.database_url(tmp_path) == f"sqlite:///{tmp_path / 'ledger.sqlite'}"
