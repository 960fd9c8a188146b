#!/usr/bin/env bash
# Set up (idempotent), lint, and run the whole test suite: unit tests, then the integration tests
# against a real stack (Ray Serve + vLLM on CPU + SmolLM2) that the suite starts and stops itself.
# Extra arguments go to pytest (e.g. tests/unit for the fast part only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "${@:-tests}"
