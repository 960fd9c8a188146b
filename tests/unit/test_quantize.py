"""Quantized registry models: the checkpoint is compressed-tensors' own format, its error is what the scheme
allows, a pull builds it from the provisioned base and notices when that base changes."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from llm_serve.models import provision
from llm_serve.models.provision import MANIFEST, ProvisionError, is_provisioned, pull_model, verify_quantized
from llm_serve.models.quantize import (
    SCHEMES,
    checkpoint_quantization,
    needs_half_activations,
    quantize_checkpoint,
)
from llm_serve.models.registry import QUANTIZED, REGISTRY
from llm_serve.models.resolve import model_dir, resolve_model_source
from tests.tiny_model import build_tiny_llama

BASE = "smollm2-135m-instruct"
W8A8 = "smollm2-135m-instruct-w8a8"
W4A16 = "smollm2-135m-instruct-w4a16"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


@pytest.mark.parametrize(("scheme", "max_error"), [("w8a8-int8", 0.02), ("w4a16", 0.15)])
def test_checkpoint_is_compressed_tensors_with_the_schemes_error(
    tiny_dir: Path, tmp_path: Path, scheme: str, max_error: float
) -> None:
    from safetensors import safe_open

    out = tmp_path / scheme
    facts = quantize_checkpoint(tiny_dir, out, scheme)
    assert facts["quantized_layers"] == 2 * 7  # q k v o gate up down per layer; lm_head left out
    assert 0 < facts["weight_rel_error_mean"] <= facts["weight_rel_error_max"] < max_error
    verify_quantized(out, scheme)
    qconfig = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qconfig["quant_method"] == "compressed-tensors" and qconfig["format"] == SCHEMES[scheme].format
    assert qconfig["ignore"] == ["lm_head"]
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
        if scheme == "w8a8-int8":
            weight = f.get_tensor("model.layers.0.mlp.down_proj.weight")
            assert str(weight.dtype) == "torch.int8"
        else:
            assert "model.layers.0.mlp.down_proj.weight_packed" in names
            assert "model.layers.0.mlp.down_proj.weight_zero_point" in names
    assert not any("lm_head" in n and "scale" in n for n in names)
    assert needs_half_activations(str(out)) is (scheme == "w4a16")
    assert checkpoint_quantization(str(out)) == "compressed-tensors"


def test_full_precision_and_unknown_sources_need_nothing(tiny_dir: Path) -> None:
    assert needs_half_activations(str(tiny_dir)) is False
    assert needs_half_activations("HuggingFaceTB/SmolLM2-360M-Instruct") is False
    assert checkpoint_quantization(str(tiny_dir)) is None
    assert checkpoint_quantization(W4A16) == "w4a16" and checkpoint_quantization(BASE) is None


def test_verification_refuses_a_full_precision_checkpoint(tiny_dir: Path) -> None:
    with pytest.raises(ProvisionError, match="no quantization_config"):
        verify_quantized(tiny_dir, "w8a8-int8")


def _provision_tiny_base(tiny_dir: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The base as a pull leaves it (a manifest last), without the wheel and the GGUF conversion."""
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_dir)
    monkeypatch.setitem(
        REGISTRY,
        BASE,
        replace(REGISTRY[BASE], expected_layers=cfg.num_hidden_layers, expected_vocab_size=cfg.vocab_size),
    )
    base = model_dir(home, BASE)
    base.parent.mkdir(parents=True)
    work = base.parent / ".work"
    shutil.copytree(tiny_dir, work)
    provision._install(work, base, {"name": BASE})
    assert is_provisioned(base)
    return base


def test_pull_quantizes_the_provisioned_base_once(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = _provision_tiny_base(tiny_dir, tmp_path, monkeypatch)
    messages: list[str] = []
    target = pull_model(W4A16, tmp_path, progress=False, report=messages.append)
    assert target == model_dir(tmp_path, W4A16) and is_provisioned(target)
    manifest = json.loads((target / MANIFEST).read_text())
    base_manifest = json.loads((base / MANIFEST).read_text())
    assert manifest["base"] == BASE and manifest["base_weights_sha256"] == base_manifest["weights_sha256"]
    assert manifest["quantization"] == QUANTIZED[W4A16].scheme and manifest["quantized_layers"] == 14
    assert [m.split(" (")[0] for m in messages if m.startswith("[")] == [
        f"[1/3] base model {BASE}",
        f"[2/3] quantizing: {SCHEMES['w4a16'].summary}",
        "[3/3] verifying",
    ]
    assert resolve_model_source(W4A16, tmp_path) == str(target)
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "no temporary directory left"

    calls: list[str] = []
    from llm_serve.models import quantize

    original = quantize.quantize_checkpoint
    monkeypatch.setattr(quantize, "quantize_checkpoint", lambda *a: calls.append("q") or original(*a))
    pull_model(W4A16, tmp_path, progress=False, report=lambda _m: None)
    assert calls == [], "a second pull is a no-op"

    # The base pulled again (new weights): the variant is stale and the next pull quantizes it again.
    manifest_path = base / MANIFEST
    stale = json.loads(manifest_path.read_text()) | {"weights_sha256": "0" * 64}
    manifest_path.write_text(json.dumps(stale))
    assert is_provisioned(base) and not is_provisioned(target)
    pull_model(W4A16, tmp_path, progress=False, report=lambda _m: None)
    assert calls == ["q"] and is_provisioned(target)


def test_failed_quantization_leaves_nothing_behind(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _provision_tiny_base(tiny_dir, tmp_path, monkeypatch)
    from llm_serve.models import quantize

    def broken(src: Path, out: Path, scheme: str) -> dict:
        shutil.copytree(src, out)  # a half-written directory, then a failure
        raise RuntimeError("out of memory")

    monkeypatch.setattr(quantize, "quantize_checkpoint", broken)
    with pytest.raises(ProvisionError, match="quantizing smollm2-135m-instruct failed: RuntimeError: out of memory"):
        pull_model(W8A8, tmp_path, progress=False, report=lambda _m: None)
    assert not model_dir(tmp_path, W8A8).exists()
    assert not [p for p in model_dir(tmp_path, W8A8).parent.iterdir() if p.name.startswith(".")]


def test_models_quantize_writes_a_checkpoint_of_ones_own(
    tiny_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from llm_serve.cli import main

    out = tmp_path / "mine-w8a8"
    assert main(["models", "quantize", str(tiny_dir), "--scheme", "w8a8-int8", "--out", str(out)]) == 0
    verify_quantized(out, "w8a8-int8")
    assert f"source: {out}" in capsys.readouterr().err
    assert main(["models", "quantize", str(tiny_dir), "--scheme", "w8a8-int8", "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["models", "quantize", str(tmp_path), "--scheme", "w4a16", "--out", str(tmp_path / "x")]) == 2
    assert "no config.json" in capsys.readouterr().err
