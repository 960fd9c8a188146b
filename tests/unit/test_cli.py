"""The CLI's argument handling and the commands that need no running stack."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_serve.cli import build_parser, main


def test_config_flag_is_accepted_before_or_after_the_command() -> None:
    parser = build_parser()
    assert parser.parse_args(["--config", "a.yaml", "up"]).config == "a.yaml"
    assert parser.parse_args(["up", "--config", "b.yaml", "--detach"]).config == "b.yaml"
    assert parser.parse_args(["models", "pull", "smollm2-135m-instruct"]).name == "smollm2-135m-instruct"


def test_bad_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: not-a-port\n")
    assert main(["--config", str(bad), "status"]) == 2
    assert "server.port" in capsys.readouterr().err


def test_down_without_up_is_harmless(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_SERVE_HOME", str(tmp_path))
    assert main(["down"]) == 0
    assert "not up" in capsys.readouterr().err


def test_models_list_shows_registry_and_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_SERVE_HOME", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-135m-instruct" in out and "not pulled" in out


def test_pull_of_unknown_model_fails_cleanly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLM_SERVE_HOME", str(tmp_path))
    assert main(["models", "pull", "gpt-17"]) == 1
    assert "unknown registry model" in capsys.readouterr().err
