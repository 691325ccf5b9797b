#!/usr/bin/env bash
# Set up from scratch and run the whole test suite (what CI runs): lint, format check, tests,
# then the kernel tests again on the GPU machine's Triton.
#
# Without CUDA, Triton kernels run through the interpreter (tests/conftest.py sets
# TRITON_INTERPRET=1). Pass pytest options through, e.g. scripts/test.sh -k reference.
#
# The lent GPU machine runs triton 3.6.0 while pip here takes the newest, so the kernel tests
# (interpreter, and the sm_90 compiles of tests/kernels/test_kernel_resources.py) run a second
# time with triton 3.6.0 installed into .triton-3.6.0/ and put first on PYTHONPATH. Its
# interpreter needs numpy < 2.4 (it converts one-element arrays with int(), which NumPy 2.4
# refuses), so that folder holds numpy 2.3 too. FASTLSTM_SKIP_SECOND_TRITON=1 skips it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
GPU_TRITON=3.6.0
bash scripts/install.sh dev
"$PY" -m ruff check .
"$PY" -m ruff format --check .
"$PY" -m pytest "$@"

if [ -n "${FASTLSTM_SKIP_SECOND_TRITON:-}" ]; then
    exit 0
fi
second=".triton-$GPU_TRITON"
if ! PYTHONPATH="$second" "$PY" -c "import triton, sys; sys.exit(triton.__version__ != '$GPU_TRITON')" 2>/dev/null; then
    echo "test.sh: installing triton==$GPU_TRITON into $second/ for the second kernel run"
    rm -rf "$second"
    "$PY" -m pip install --quiet --no-deps --target "$second" "triton==$GPU_TRITON" "numpy<2.4"
fi
echo "test.sh: the kernel tests again with triton $GPU_TRITON (the GPU machine's)"
PYTHONPATH="$second" "$PY" -m pytest -p no:cacheprovider tests/kernels tests/test_sync.py "$@"
