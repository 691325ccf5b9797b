"""Compile both batch-tiled kernels for an H100/H200 (sm_90) without a GPU, at odd shapes.

The interpreter runs the kernels' Python but not Triton's compiler, which is stricter
(types of loop bounds, layouts, ``tl.dot`` shapes). Compiling to a cubin ahead of time with
the ptxas bundled in the triton wheel catches such errors in CI, here at shapes that are not
multiples of 16, with reverse, lengths and projection (test_kernel_resources.py compiles the
launch settings of the benchmark shapes). It runs in a subprocess because
``TRITON_INTERPRET=1`` (set for this test session) replaces the JIT with the interpreter at
import time.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

SCRIPT = r"""
import sys
import kernel_resources  # sets TRITON_INTERPRET=0 before triton is imported
from fastlstm.kernels import lstm
from fastlstm.kernels.launch import RecurrenceConfig

CASES = [  # weight dtype, dot precision, H, P, lengths, reverse, projection, tiles
    ("fp32", "ieee", 20, 20, False, False, False, (16, 32, 32)),
    ("fp32", "tf32", 20, 9, True, True, True, (16, 16, 16)),
    ("bf16", "tf32", 20, 9, True, True, True, (16, 16, 16)),
    ("fp16", "tf32", 200, 72, True, False, True, (16, 64, 128)),
]
for dtype, precision, H, P, lengths, reverse, proj, (bb, bh, bk) in CASES:
    cfg = RecurrenceConfig(bb, bh, bk, num_warps=4, num_stages=1)
    options = lstm._kernel_options(cfg, H, P if proj else 0, reverse, None)
    options["DOT_PRECISION"] = precision
    constexprs = {k: v for k, v in options.items() if k not in lstm._LAUNCH_OPTIONS}
    constexprs.update(HAS_LENGTHS=lengths, HAS_PROJ=proj)
    for name, kernel in lstm._KERNELS:
        build = lstm._build(name, kernel, dtype, constexprs, options, {})
        compiled = kernel_resources.compile_build(build)
        assert compiled.asm["cubin"], (name, dtype)
        print("compiled", name, dtype, H, P, flush=True)
"""


def test_kernels_compile_for_sm90():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": str(BENCHMARKS)}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 8
