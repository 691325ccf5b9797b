#!/usr/bin/env bash
# GPU check for the Triton kernels: the kernel tests compiled on the GPU (gpu marker), then
# the kernel benchmark against cuDNN nn.LSTM. Writes to $1 (default benchmarks/results/gpu):
# gpu_tests.log, gpu_tests.xml, kernels.json, kernels.md. At most 6 minutes (each part has a
# timeout; the benchmark writes its files after every shape, so a cut-short run keeps them).
# Speedups are withheld in kernels.md when the tests fail. Exit status: non-zero if either
# the tests or the benchmark's agreement check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-benchmarks/results/gpu}"
mkdir -p "$out"
# The interpreter must be off so that the kernels are compiled for the GPU.
unset TRITON_INTERPRET

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$out/nvidia_smi.txt"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, \
'cuda', torch.version.cuda)" | tee -a "$out/nvidia_smi.txt"

timeout 180 python -m pytest tests/kernels -m gpu -q -p no:cacheprovider \
    --junitxml "$out/gpu_tests.xml" 2>&1 | tee "$out/gpu_tests.log"
test_rc=${PIPESTATUS[0]}
tests=$([ "$test_rc" -eq 0 ] && echo passed || echo "failed (rc $test_rc)")
echo "gpu_check: kernel tests $tests"

timeout 170 python benchmarks/gpu_kernels.py --out "$out" --tests "$tests"
bench_rc=$?
echo "gpu_check: benchmark rc $bench_rc; results in $out"
[ "$test_rc" -eq 0 ] && [ "$bench_rc" -eq 0 ]
