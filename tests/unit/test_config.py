"""Configuration: defaults work, shipped files load, and bad input names the bad field."""

from pathlib import Path

import pytest

from llm_serve.config import Config, ConfigError, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]


def test_default_config_serves_the_embedded_model() -> None:
    config = Config()
    assert [m.id for m in config.models] == ["smollm2-135m-instruct"]
    assert config.models[0].engine.accelerator == "cpu"
    assert config.server.host == "127.0.0.1"


@pytest.mark.parametrize("name", ["local.yaml", "gpu.yaml"])
def test_shipped_configs_load(name: str) -> None:
    config = load_config(ROOT / "configs" / name)
    assert config.models


def test_gpu_example_describes_a_multi_gpu_autoscaled_pool() -> None:
    config = load_config(ROOT / "configs" / "gpu.yaml")
    big = config.models[0]
    assert big.engine.accelerator == "gpu"
    assert big.engine.tensor_parallel_size == 2
    assert big.engine.accelerator_type == "A100"
    assert (big.autoscaling.min_replicas, big.autoscaling.max_replicas) == (1, 4)


def test_no_path_gives_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LLM_SERVE_CONFIG", raising=False)
    assert load_config(None) == Config()


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"models": [{"id": "m", "source": "s", "engine": {"dtype": "int3"}}]}, "models.0.engine.dtype"),
        ({"server": {"port": 70000}}, "server.port"),
        ({"server": {"prot": 8000}}, "server.prot"),
        (
            {"models": [{"id": "m", "source": "s", "autoscaling": {"min_replicas": 3, "max_replicas": 1}}]},
            "models.0.autoscaling",
        ),
        ({"models": [{"id": "m", "source": "s", "engine": {"tensor_parallel_size": 2}}]}, "models.0.engine"),
        ({"models": [{"id": "bad id!", "source": "s"}]}, "models.0.id"),
        ({"models": []}, "models"),
    ],
)
def test_bad_config_names_the_field(data: dict, path: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(data, origin="test.yaml")
    assert f"  {path}" in str(info.value)
    assert "test.yaml" in str(info.value)


def test_duplicate_model_ids_are_refused() -> None:
    with pytest.raises(ConfigError, match="duplicate model id 'm'"):
        parse_config({"models": [{"id": "m", "source": "a"}, {"id": "m", "source": "b"}]})


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("server: [unclosed")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(broken)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(scalar)


def test_home_env_overrides_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LLM_SERVE_HOME", str(tmp_path))
    assert Config(home="/elsewhere").home_path == tmp_path.resolve()
