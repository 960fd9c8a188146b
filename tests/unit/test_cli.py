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


def test_keys_create_prints_a_key_and_its_hash(capsys: pytest.CaptureFixture[str]) -> None:
    import hashlib

    from llm_serve.cli import main

    assert main(["keys", "create", "acme"]) == 0
    out = capsys.readouterr().out
    key = out.split("caller): ")[1].split()[0]
    assert f"key_sha256: {hashlib.sha256(key.encode()).hexdigest()}" in out and "name: acme" in out


def test_usage_reads_the_ledger(capsys: pytest.CaptureFixture[str]) -> None:
    from llm_serve.cli import main
    from llm_serve.config import Config
    from llm_serve.router.ledger import Ledger, LedgerRow, default_url

    ledger = Ledger(default_url(Config().home_path))
    for cost in (0.25, 0.5):
        ledger.record(LedgerRow("r", "acme", "chat", "m", False, 200, 1.0, prompt_tokens=3, cost_usd=cost))
    assert main(["usage", "--period", "day"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("acme"))
    assert line.split()[2] == "2" and line.split()[-1] == "0.750000"
