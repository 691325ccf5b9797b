"""Compile both kernels for an H100/H200 (sm_90) without a GPU.

The interpreter runs the kernels' Python but not Triton's compiler, which is stricter
(types of loop bounds, layouts, ``tl.dot`` shapes). Compiling to a cubin ahead of time with
the ptxas bundled in the triton wheel catches such errors in CI. It runs in a subprocess
because ``TRITON_INTERPRET=1`` (set for this test session) replaces the JIT with the
interpreter at import time.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from fastlstm.kernels import lstm

CONSTEXPRS = ("H", "P", "HAS_LENGTHS", "REVERSE", "HAS_PROJ", "BLOCK_B", "BLOCK_H", "BLOCK_K",
              "DOT_PRECISION")
FP32_BUFFERS = ("gates", "cs", "h_state", "c_state", "r_state", "d_xp", "d_h0", "d_c0", "d_hs",
                "dh_state", "dc_state", "dh_tot")
CASES = [  # weight dtype, dot precision, H, P, lengths, reverse, projection, tiles
    ("fp32", "ieee", 20, 20, False, False, False, (16, 32, 32)),
    ("bf16", "tf32", 20, 9, True, True, True, (16, 16, 16)),
    ("fp16", "tf32", 256, 256, True, False, False, (16, 64, 128)),
]
for dtype, precision, H, P, lengths, reverse, proj, (bb, bh, bk) in CASES:
    for kernel in (lstm._lstm_fwd_kernel, lstm._lstm_bwd_kernel):
        names = kernel.arg_names
        signature = {}
        for name in names:
            if name in ("T", "B"):
                signature[name] = "i32"
            elif name in CONSTEXPRS:
                signature[name] = "constexpr"
            elif name == "lengths":
                signature[name] = "*i64"
            elif name in FP32_BUFFERS:
                signature[name] = "*fp32"
            else:
                signature[name] = "*" + dtype
        values = dict(H=H, P=P, HAS_LENGTHS=lengths, REVERSE=reverse, HAS_PROJ=proj, BLOCK_B=bb,
                      BLOCK_H=bh, BLOCK_K=bk, DOT_PRECISION=precision)
        constexprs = {(names.index(k),): v for k, v in values.items()}
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs=constexprs),
            target=GPUTarget("cuda", 90, 32),
            options={"num_warps": 4, "num_stages": 1},
        )
        assert compiled.asm["cubin"], (kernel, dtype)
        print("compiled", kernel.__name__, dtype, H, P, flush=True)
"""


def test_kernels_compile_for_sm90():
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except ImportError:
        pytest.skip("this triton has no NVIDIA backend")
    env = {**os.environ, "TRITON_INTERPRET": "0", "TRITON_DEFAULT_FP_FUSION": "1"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("compiled") == 6
