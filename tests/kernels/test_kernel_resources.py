"""The binaries a GPU would build, compiled for sm_90 without one (kernel_resources.py).

- A CI subset of the report's grid (``B`` 1, 64, 256 and 1024, ``H`` 256 and 512, fp32 with
  TF32 and bf16, with lengths, with and without a projection, both directions, all three
  designs, forward and backward: every tile shape those sizes pick): no spill, shared memory
  within the limit and within the estimate the tile chooser trusts. The full grid (1,600
  distinct binaries, about 10 minutes) is ``python3 benchmarks/kernel_resources.py --jobs
  2``; docs/kernels.md quotes it.
- The report compiles what the JIT compiles: the pointer arguments carry the
  ``tt.divisibility = 16`` the runtime adds for 16-byte-aligned tensors, and warps and
  ``maxnreg`` are the launcher's (a source built by hand without the JIT's attributes fails
  the same check, shown here too).
- Every kernel of every design compiles at odd shapes (``H = 20``, ``P = 9``, ``B = 3``, the
  smallest tiles), which the interpreter the other tests use does not check: it has no types
  or layouts.

Each test runs in a subprocess with ``TRITON_INTERPRET=0``: this session sets it to 1, which
replaces the JIT with the interpreter when triton is imported.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "kernel_resources.py"
SUBSET = [
    "--batch", "1,64,256,1024", "--hidden", "256,512", "--precision", "tf32,bf16",
    "--lengths", "1", "--proj", "0,1", "--reverse", "0,1", "--jobs", "2",
]  # fmt: skip


def _has_nvidia_backend() -> bool:
    try:
        return importlib.util.find_spec("triton.backends.nvidia") is not None
    except ImportError:  # no triton at all
        return False


pytestmark = pytest.mark.skipif(not _has_nvidia_backend(), reason="no triton NVIDIA backend")


def _run(args: list[str], timeout: int) -> subprocess.CompletedProcess:
    path = os.pathsep.join(p for p in (str(SCRIPT.parent), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": path}
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def parse(line: str) -> dict[str, str]:
    return dict(field.split("=", 1) for field in line.split() if "=" in field)


def test_ci_subset_has_no_spills_and_fits_shared_memory():
    result = _run([str(SCRIPT), *SUBSET], timeout=900)
    rows = [parse(line) for line in result.stdout.splitlines() if line.startswith("kernel=")]
    assert rows, result.stdout[-2000:] + result.stderr[-4000:]
    kernels = {row["kernel"] for row in rows}
    assert kernels == {
        "batch_fwd", "batch_bwd", "persistent_fwd", "persistent_bwd",
        "step_fwd_cell", "step_fwd_proj", "step_bwd_cell", "step_bwd_proj",
    }, kernels  # fmt: skip
    assert {row["reverse"] for row in rows} == {"0", "1"}
    assert {row["proj"] != "0" for row in rows} == {False, True}
    assert {(row["B"], row["H"]) for row in rows} == {
        (b, h) for b in ("1", "64", "256", "1024") for h in ("256", "512")
    }
    for row in rows:
        assert "error" not in row, row
        assert (row["spill_stores"], row["spill_loads"]) == ("0", "0"), row
        assert int(row["regs"]) <= 255, row
        assert int(row["smem"]) <= int(row["smem_limit"]) == 232_448, row
        if row["smem_estimate"] != "-":
            assert int(row["smem"]) <= int(row["smem_estimate"]), row
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


SPECIALISATION = r"""
import re

import kernel_resources as kr  # first: TRITON_INTERPRET=0 before triton is imported
import triton
from triton.compiler import ASTSource

from fastlstm.kernels import launch


def undivisible_pointers(ttir):
    # The kernel's pointer arguments without tt.divisibility = 16.
    head = next(line for line in ttir.splitlines() if "tt.func public" in line)
    args = re.findall(r"%(\w+): !tt\.ptr<[^>]*>( \{[^}]*\})?", head)
    assert args, head
    return [name for name, attrs in args if "tt.divisibility = 16" not in attrs]


for design in ("batch", "persistent", "step"):
    for backward in (False, True):
        case = kr.Case(design, "bf16", 64, 64, 16, True, True, backward)
        cfg = kr.planned_config(case)
        compiler = kr.compile_case(case, keep_binaries=True)
        for launch_ in compiler.launches:
            binary = compiler.binaries[(launch_.kernel, launch_.key)]
            missing = undivisible_pointers(binary.asm["ttir"])
            assert missing == [], (launch_.label, missing, binary.src.attrs)
            warps = cfg.warps(launch_.label) if design != "batch" else cfg.num_warps
            assert binary.metadata.num_warps == launch_.warps == warps
            assert binary.metadata.maxnreg == launch_.maxnreg == cfg.maxnreg
            print("specialised", launch_.label, flush=True)

# The control: the same kernel, signature and constexprs without the JIT's attributes.
src = binary.src
hand = ASTSource(src.fn, src.signature, src.constants)
control = triton.compile(hand, target=kr.GPU_TARGET, options={"num_warps": 4})
assert undivisible_pointers(control.asm["ttir"]), "a hand-built source has no divisibility"
print("control", flush=True)
"""


def test_report_compiles_with_the_jit_specialisation():
    result = _run(["-c", SPECIALISATION], timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("specialised") == 2 + 2 + 4  # batch, persistent, step
    assert "control" in result.stdout


ODD_SHAPES = r"""
import kernel_resources as kr  # first: TRITON_INTERPRET=0 before triton is imported

from fastlstm.kernels.launch import BatchConfig, PersistentConfig

CASES = [  # precision, H, proj, lengths, reverse
    ("ieee", 20, 0, False, False),
    ("tf32", 20, 9, True, True),
    ("bf16", 20, 9, True, False),
    ("fp16", 200, 72, False, True),
]
for precision, H, proj, lengths, reverse in CASES:
    for design in ("batch", "persistent", "step"):
        if design == "batch":
            cfg = BatchConfig(16, 16, 16, num_warps=4)
        else:
            cfg = PersistentConfig(16, 16 if proj else 4, num_warps=4)
        for backward in (False, True):
            case = kr.Case(design, precision, 3, H, proj, lengths, reverse, backward)
            compiler = kr.compile_case(case, cfg)
            assert compiler.launches, case
            for launch_ in compiler.launches:
                res = compiler.compiled[(launch_.kernel, launch_.key)]
                assert isinstance(res, kr.Resources), (case, launch_.label, res)
                print("compiled", launch_.label, precision, H, proj, flush=True)
"""


def test_every_kernel_compiles_at_odd_shapes():
    result = _run(["-c", ODD_SHAPES], timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    # Per case: batch 2, persistent 2, step 2 (4 with a projection) kernels.
    assert result.stdout.count("compiled") == 6 + 8 + 8 + 8
