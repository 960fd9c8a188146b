#!/usr/bin/env bash
# Set up (idempotent) and serve the OpenAI-compatible endpoint with the embedded default.
# Extra arguments go to `llm-serve up` (e.g. --detach, --config configs/local.yaml).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
exec .venv/bin/llm-serve up "$@"
