"""Registers, shared memory and spills of every Triton LSTM kernel, compiled for sm_90.

No GPU needed: each kernel is compiled ahead of time (``triton.compile`` with a
``GPUTarget``) at every launch setting the launchers can pick at ``B = 64`` (each kernel
family's ``resource_cases()``: the batch-tiled kernels of ``kernels/lstm.py`` and the
persistent / one-step-per-launch kernels of ``kernels/persistent.py``), then the PTX goes
through ``ptxas -v`` from the triton wheel, which prints registers, stack frame and spill
bytes. One line per kernel and setting::

    kernel=batch_fwd dtype=fp32 H=256 regs=128 smem=8192 spill_stores=0 spill_loads=0 ...

``smem`` is the shared memory Triton allocates for the kernel (dynamic shared memory).
Exits 1 when any kernel spills at ``H <= --max-spill-hidden`` (512), the CI gate.

    python3 benchmarks/kernel_resources.py                      # everything (minutes)
    python3 benchmarks/kernel_resources.py --hidden 256 --dtype fp32,bf16 --design batch

Local-memory traffic inside the time loop of a latency-bound recurrence is paid on every
step, hence the gate (docs/kernels.md, "Registers and spills").
"""

from __future__ import annotations

import os

# Before triton is imported: compile the kernels rather than interpret them, and really
# compile (a cache hit would skip the ptxas run whose report this script reads).
os.environ["TRITON_INTERPRET"] = "0"
os.environ["TRITON_ALWAYS_COMPILE"] = "1"
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import argparse
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a plain checkout

import triton

from fastlstm.kernels.launch import KernelBuild

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
HIDDENS = (64, 128, 256, 512, 1024)
VARIANTS = {  # (lengths, projection)
    "plain": (False, False),
    "lengths": (True, False),
    "proj": (False, True),
    "lengths+proj": (True, True),
}


@dataclass(frozen=True)
class Resources:
    regs: int
    smem: int
    stack: int
    spill_stores: int
    spill_loads: int


class _PtxasLogs:
    """Stands in for ``subprocess`` inside Triton's NVIDIA backend and keeps the report of
    every ``ptxas -v`` it runs: the numbers of the cubin Triton really builds, with Triton's
    own ptxas flags (they change register allocation, e.g. ``--regAllocOptLevel``)."""

    def __init__(self, real) -> None:
        self._real = real
        self.logs: list[str] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def run(self, cmd, *args, **kwargs):
        result = self._real.run(cmd, *args, **kwargs)
        log = kwargs.get("stderr")
        if "-v" in cmd and hasattr(log, "name"):
            with open(log.name) as f:
                self.logs.append(f.read())
        return result


def _recording_backend() -> _PtxasLogs | None:
    try:
        from triton.backends.nvidia import compiler
    except ImportError:
        return None
    if not isinstance(compiler.subprocess, _PtxasLogs):
        compiler.subprocess = _PtxasLogs(compiler.subprocess)
    return compiler.subprocess


def _ptxas() -> str:
    """The ptxas Triton itself uses for sm_90 (the wheel bundles it)."""
    from triton.backends.nvidia import compiler

    try:
        return compiler.get_ptxas(90).path
    except TypeError:  # older Triton: get_ptxas() takes no architecture
        return compiler.get_ptxas().path


def _jit_function(kernel):
    # A @triton.heuristics (or autotune) wrapper holds the JITFunction in .fn.
    while not isinstance(kernel, triton.runtime.jit.JITFunction):
        kernel = kernel.fn
    return kernel


def compile_build(build: KernelBuild, capability: int = 90):
    """``triton.compile`` one :class:`KernelBuild` for an NVIDIA GPU of ``capability``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = _jit_function(build.kernel)
    signature = {**build.signature, **dict.fromkeys(build.constexprs, "constexpr")}
    signature = {name: signature[name] for name in fn.arg_names}
    constexprs = {(fn.arg_names.index(k),): v for k, v in build.constexprs.items()}
    return triton.compile(
        ASTSource(fn, signature, constexprs=constexprs),
        target=GPUTarget("cuda", capability, 32),
        options={
            "num_warps": build.num_warps,
            "num_stages": build.num_stages,
            **({} if build.maxnreg is None else {"maxnreg": build.maxnreg}),
        },
    )


def resources(build: KernelBuild) -> Resources:
    """Compile ``build`` and read its resource usage from ``ptxas -v``: the report of the
    ptxas run Triton makes itself, else (another Triton) a run of our own on its PTX."""
    recorder = _recording_backend()
    seen = len(recorder.logs) if recorder is not None else 0
    compiled = compile_build(build)
    if recorder is not None and len(recorder.logs) > seen:
        log, ok = recorder.logs[-1], True
    else:
        log, ok = _own_ptxas_run(compiled.asm["ptx"])
    regs = re.search(r"Used (\d+) registers", log)
    frame = re.search(
        r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", log
    )
    if not ok or regs is None or frame is None:
        raise RuntimeError(f"ptxas -v failed for {build.name}:\n{log[-2000:]}")
    static_smem = re.search(r"(\d+) bytes smem", log)
    smem = compiled.metadata.shared + (int(static_smem.group(1)) if static_smem else 0)
    stack, stores, loads = (int(v) for v in frame.groups())
    return Resources(int(regs.group(1)), smem, stack, stores, loads)


def _own_ptxas_run(ptx: str) -> tuple[str, bool]:
    arch = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        cmd = [_ptxas(), "-lineinfo", "-v", "--gpu-name", arch, str(src)]
        src.write_text(ptx)
        run = subprocess.run(
            [*cmd, "-o", str(Path(tmp) / "kernel.o")], capture_output=True, text=True, check=False
        )
    return run.stdout + run.stderr, run.returncode == 0


def line(build: KernelBuild, res: Resources) -> str:
    fields = {
        "kernel": build.name,
        "dtype": build.dtype,
        "H": build.hidden,
        "regs": res.regs,
        "smem": res.smem,
        "spill_stores": res.spill_stores,
        "spill_loads": res.spill_loads,
        "stack": res.stack,
        **build.fields,
    }
    return " ".join(f"{k}={v}" for k, v in fields.items())


def builds(designs, hiddens, dtypes, variants) -> list[KernelBuild]:
    """The builds of every requested design, from each kernel family's resource_cases()."""
    torch_dtypes = tuple(DTYPES[d] for d in dtypes)
    pairs = tuple(VARIANTS[v] for v in variants)
    found: list[KernelBuild] = []
    if "batch" in designs:
        from fastlstm.kernels import lstm

        found += lstm.resource_cases(hiddens, torch_dtypes, variants=pairs)
    if {"persistent", "step"} & set(designs):
        from fastlstm.kernels import persistent

        for build in persistent.resource_cases(hiddens, torch_dtypes, variants=pairs):
            if build.name.split("_")[0] in designs:
                found.append(build)
    return found


_SELECTION: list[KernelBuild] = []


def _select(*selection) -> None:
    # Builds hold kernel functions, which do not pickle: each worker makes the same list.
    _SELECTION[:] = _builds(*selection)


def _measure(index: int) -> tuple[str, bool]:
    build = _SELECTION[index]
    res = resources(build)
    return line(build, res), res.spill_stores > 0 or res.spill_loads > 0


def _builds(designs, hiddens, dtypes, variants, kernels) -> list[KernelBuild]:
    found = builds(designs, hiddens, dtypes, variants)
    return [b for b in found if not kernels or b.name in kernels]


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=_csv, default=[str(h) for h in HIDDENS])
    parser.add_argument("--dtype", type=_csv, default=list(DTYPES))
    parser.add_argument("--design", type=_csv, default=["batch", "persistent", "step"])
    parser.add_argument("--variant", type=_csv, default=list(VARIANTS), help=", ".join(VARIANTS))
    parser.add_argument("--kernel", type=_csv, default=[], help="only these kernel= names")
    parser.add_argument("--max-spill-hidden", type=int, default=512)
    parser.add_argument("--jobs", type=int, default=1, help="parallel compiles")
    args = parser.parse_args(argv)
    selection = (
        args.design,
        tuple(int(h) for h in args.hidden),
        args.dtype,
        args.variant,
        args.kernel,
    )
    _select(*selection)
    todo = list(_SELECTION)
    if not todo:
        print("no kernel matches the selection", file=sys.stderr)
        return 2
    failures = []
    if args.jobs > 1:
        pool = ProcessPoolExecutor(args.jobs, initializer=_select, initargs=selection)
        results = pool.map(_measure, range(len(todo)))
    else:
        pool, results = None, map(_measure, range(len(todo)))
    for build, (text, spills) in zip(todo, results, strict=True):
        print(text, flush=True)
        if spills and build.hidden <= args.max_spill_hidden:
            failures.append(text)
    if pool is not None:
        pool.shutdown()
    print(
        f"{len(todo)} kernels compiled for sm_90; {len(failures)} spill at H <= "
        f"{args.max_spill_hidden}",
        flush=True,
    )
    for text in failures:
        print(f"SPILL {text}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
