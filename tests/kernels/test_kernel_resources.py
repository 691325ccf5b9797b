"""Registers and spills in CI: ``benchmarks/kernel_resources.py`` on a subset.

Every kernel design compiled for sm_90 (bundled ptxas, no GPU) at the launch settings the
launchers pick for ``B = 64, H = 256`` (the benchmark shapes' hidden size) with lengths and
a projection (every optional code path), fp32 (TF32 and exact dots) and bf16: no spill
stores or loads. The full grid (H 64-1024, every dtype and variant, a few minutes) is
``python3 benchmarks/kernel_resources.py``; docs/kernels.md quotes it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kernel_resources.py"
SUBSET = ["--hidden", "256", "--dtype", "fp32,bf16", "--variant", "lengths+proj", "--jobs", "2"]


def parse(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split())


def test_no_spills_at_the_benchmark_hidden_size():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    result = subprocess.run(
        [sys.executable, str(SCRIPT), *SUBSET],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    rows = [parse(line) for line in result.stdout.splitlines() if line.startswith("kernel=")]
    assert rows, result.stderr[-4000:]
    kernels = {row["kernel"] for row in rows}
    assert {"batch_fwd", "batch_bwd"} <= kernels, kernels
    assert any(k.startswith("persistent") for k in kernels), kernels
    assert any(k.startswith("step") for k in kernels), kernels
    batch_fp32 = {row["precision"] for row in rows if row["design"] == "batch"}
    assert batch_fp32 == {"tf32", "ieee"}
    for row in rows:
        assert row["H"] == "256" and int(row["regs"]) <= 255
        assert (row["spill_stores"], row["spill_loads"]) == ("0", "0"), row
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
