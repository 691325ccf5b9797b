"""Compile the Triton kernels a benchmark will run, in parallel, before it runs them.

Triton compiles a kernel the first time one of its configurations runs (each hidden size,
batch tile, dtype, dot precision and design is its own binary) and keeps the binary in its
on-disk cache (``~/.triton/cache``, or ``TRITON_CACHE_DIR``). In one benchmark process those
compiles run one after another on one core: the GPU check's grid needs a few hundred of
them, at very roughly a second each. Running every (precision, shape, Triton provider) once
forward and once forward+backward in a pool of worker processes fills the same cache on all
cores; the benchmark then loads the binaries from disk.

Each call runs a short version of the shape (:func:`short_shape`): the same batch, sizes
and options, so the same tiles, with a sequence length Triton specializes alike, so that a
pool of workers never holds many full-size problems on one GPU at once. Nothing here is
timed, and compile time never reaches a measurement either way: the benchmark runs every
provider once, untimed, for its check before it times it.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import torch

__all__ = ["PrecompileReport", "precompile", "precompiled_providers", "short_shape"]

# Triton specializes an integer argument on whether it equals 1 and whether 16 divides it;
# sequence lengths alike in both compile to the same binaries.
_SPECIALIZE = 16


@dataclass(frozen=True)
class PrecompileReport:
    """What a precompile pass did: calls that ran, could not run, or failed, and its time."""

    ran: int
    unavailable: int
    failed: tuple[str, ...]
    seconds: float

    def describe(self) -> str:
        text = (
            f"precompiled the Triton kernels: {self.ran} (precision, shape, provider) ran, "
            f"{self.unavailable} cannot run there, {len(self.failed)} failed, "
            f"in {self.seconds:.0f} s"
        )
        return "\n".join([text, *(f"  failed: {f}" for f in self.failed)])


def precompiled_providers(providers: Sequence[str]) -> list[str]:
    """The providers whose kernels are compiled on first use: every ``fastlstm-triton*``."""
    return [p for p in providers if p.startswith("fastlstm-triton")]


def short_shape(shape):
    """``shape`` with the shortest sequence length Triton specializes like its own.

    The kernels' tiles depend on the batch and sizes, not on T; Triton's binaries on T only
    through ``T == 1`` and ``T % 16 == 0``, both kept here.
    """
    T = shape.T
    if T > 2 * _SPECIALIZE:
        T = _SPECIALIZE + T % _SPECIALIZE
    min_len = None if shape.min_len is None else min(shape.min_len, T)
    return dataclasses.replace(shape, T=T, min_len=min_len)


def _run_one(task: tuple[str, str, str, str]) -> tuple[str, str]:
    """Run one provider on one problem, forward and forward+backward: ``(outcome, detail)``."""
    from fastlstm.bench.providers import build_case, make_problem, provider_why_not
    from fastlstm.bench.runner import PRECISIONS, _tf32_switches
    from fastlstm.bench.shapes import parse_shape

    precision_name, shape_text, provider, device_text = task
    precision, shape = PRECISIONS[precision_name], short_shape(parse_shape(shape_text))
    device = torch.device(device_text)
    label = f"{provider} {shape_text} {precision_name}"
    if provider_why_not(provider, device, precision.dtype, shape) is not None:
        return "unavailable", label
    try:
        # The very problem and module the benchmark builds, so the same binaries compile.
        with _tf32_switches(precision):
            case = build_case(provider, make_problem(shape, device, precision.dtype))
            case.forward()
            case.forward_backward()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            del case
            if device.type == "cuda":
                torch.cuda.empty_cache()  # leave the GPU's memory to the other workers
    except RuntimeError as err:
        # A pinned design that cannot serve the shape raises; the benchmark says so too.
        if provider.startswith("fastlstm-triton-"):
            return "unavailable", label
        return "failed", f"{label}: {type(err).__name__}: {err}".splitlines()[0]
    except Exception as err:  # reported, and the benchmark reports it again as an error row
        return "failed", f"{label}: {type(err).__name__}: {err}".splitlines()[0]
    return "ran", label


def _worker_init() -> None:
    # One thread per worker: the pool already uses every core.
    torch.set_num_threads(1)


def precompile(
    shapes: Sequence,
    providers: Sequence[str],
    device: torch.device | str,
    precisions: Sequence,
    workers: int,
) -> PrecompileReport:
    """Run each (precision, shape, Triton provider) once in ``workers`` processes.

    ``shapes`` are :class:`~fastlstm.bench.shapes.Shape`, ``precisions``
    :class:`~fastlstm.bench.runner.Precision`. Processes are spawned (CUDA cannot be used
    in a forked child); each one has its own CUDA context. Returns what ran.
    """
    start = time.perf_counter()
    device = torch.device(device)
    tasks = [
        (precision.name, shape.id, provider, str(device))
        for precision in precisions
        for shape in shapes
        for provider in precompiled_providers(providers)
    ]
    outcomes: list[tuple[str, str]] = []
    if tasks and workers > 0:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)), mp_context=context, initializer=_worker_init
        ) as pool:
            outcomes = list(pool.map(_run_one, tasks))
    return PrecompileReport(
        ran=sum(o == "ran" for o, _ in outcomes),
        unavailable=sum(o == "unavailable" for o, _ in outcomes),
        failed=tuple(d for o, d in outcomes if o == "failed"),
        seconds=time.perf_counter() - start,
    )
