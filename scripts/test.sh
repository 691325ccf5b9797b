#!/usr/bin/env bash
# Set up from scratch and run the whole test suite (what CI runs): lint, format check, tests.
# Without CUDA, Triton kernels run through the interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1). Pass pytest options through, e.g. scripts/test.sh -k reference
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
bash scripts/install.sh dev
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m pytest "$@"
