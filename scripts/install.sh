#!/usr/bin/env bash
# Install fastlstm (editable) and what it needs into the active Python.
#   scripts/install.sh          the library, trainer and benchmark tool
#   scripts/install.sh dev      plus the test and lint tools
# On a machine without CUDA it first installs the pinned CPU build of torch, so that pip
# never resolves the plain "torch" requirement to a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
extras="train,bench${1:+,$1}"

if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
        echo "install.sh: CUDA found; pip picks a CUDA build of torch"
    else
        echo "install.sh: no CUDA; installing the CPU build torch==2.13.0 first"
        "$PY" -m pip install --quiet "torch==2.13.0"
    fi
fi
"$PY" -m pip install --quiet -e ".[${extras}]"
"$PY" -c "import fastlstm, torch; print(f'install.sh: fastlstm {fastlstm.__version__}, torch {torch.__version__}')"
