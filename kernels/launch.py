"""Launch settings for the LSTM kernels: pure functions of shape, dtype and device.

One place decides tile sizes, warps, stages and register budgets, deterministically (no
autotuning), so a given shape on a given GPU always runs the same code: reproducible tests
and benchmarks. It also says which requests the kernels cannot serve
(:func:`unsupported_reason`), which the ``auto`` backend selection uses to fall back; which
kernel design serves a call (:func:`choose_design`, forced by ``FASTLSTM_TRITON_DESIGN``);
the one door every launch goes through (:func:`launch`); and the compile spec of a kernel
at one launch setting (:class:`KernelBuild`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch

from fastlstm.runtime import triton_interpreting as interpreting

__all__ = [
    "DESIGNS",
    "DESIGN_ENV",
    "MAX_HIDDEN",
    "SUPPORTED_DTYPES",
    "KernelBuild",
    "RecurrenceConfig",
    "choose_design",
    "design_step_us",
    "design_unsupported_reason",
    "dot_precision",
    "forced_design",
    "interpreting",
    "launch",
    "recurrence_config",
    "unsupported_reason",
]

# Beyond this one program per batch tile streams more than 32 MiB of W_hh per step;
# the reference or cuDNN serve such sizes better.
MAX_HIDDEN = 2048
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class RecurrenceConfig:
    """Tile sizes and launch options shared by the forward and backward kernels.

    ``block_b`` rows of the batch per program; the hidden dimension is walked in
    ``block_h`` columns (per gate) and the reduction over ``h`` in ``block_k`` chunks.
    Every side is at least 16 because ``tl.dot`` needs it. ``maxnreg`` is the register
    budget per thread given to ptxas (``.maxnreg``; None leaves ptxas its own target).
    """

    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    num_stages: int
    maxnreg: int | None = None


@dataclass(frozen=True)
class KernelBuild:
    """One kernel at one launch setting, for compiling ahead of time without a GPU.

    Each kernel family exposes the builds its launchers can pick (``resource_cases()``);
    ``benchmarks/kernel_resources.py`` compiles them for sm_90 and reports registers, shared
    memory and spills, one line per build.

    Attributes:
        name: the report's ``kernel=`` field, e.g. ``"lstm_fwd"``.
        kernel: the ``@triton.jit`` function (a ``@triton.heuristics`` wrapper is unwrapped
            by the compiler helper, so give the heuristics' outputs in ``constexprs``).
        signature: Triton type of every runtime argument: ``"*fp32"``, ``"*bf16"``,
            ``"*fp16"``, ``"*i64"``, ``"i32"``, ``"i64"``.
        constexprs: value of every other argument: the ``tl.constexpr`` parameters and the
            pointers passed as ``None``.
        num_warps, num_stages: the launch options the launcher uses.
        dtype: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (weights/inputs) for the report.
        hidden: ``H`` for the report.
        fields: further ``key=value`` report fields (``B``, ``lengths``, ``proj``, ``design``).
        maxnreg: the launch's ``maxnreg`` option (ptxas register budget), or None.
    """

    name: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    dtype: str
    hidden: int
    fields: dict[str, Any] = field(default_factory=dict)
    maxnreg: int | None = None


def launch(
    kernel,
    grid: tuple[int, ...],
    *,
    device: torch.device,
    num_warps: int,
    num_stages: int,
    cooperative: bool = False,
    maxnreg: int | None = None,
    **kernel_args,
) -> None:
    """Launch ``kernel[grid]`` with keyword arguments: the one door every kernel launch uses.

    ``cooperative`` asks the driver to guarantee that all programs are resident at once
    (``launch_cooperative_grid``, Triton >= 3.3), which a grid barrier inside the kernel
    needs; the interpreter runs programs one after another and ignores it. Tools that
    inspect launches (``benchmarks/kernel_resources.py``) wrap this function. ``maxnreg``
    caps the registers per thread (ptxas ``.maxnreg``); the interpreter ignores it.
    """
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if cooperative:
        options["launch_cooperative_grid"] = True
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    if device.type == "cuda":
        with torch.cuda.device(device):
            kernel[grid](**kernel_args, **options)
    else:
        kernel[grid](**kernel_args, **options)


def _pow2_tile(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, 1 << max(0, n - 1).bit_length()))


def recurrence_config(batch: int, hidden: int, proj: int, dtype: torch.dtype) -> RecurrenceConfig:
    """Tiles for a ``[batch]`` x ``hidden`` (x ``proj``) recurrence with weights of ``dtype``.

    The time loop is latency-bound, so more programs (smaller batch tiles) run more of the
    batch in parallel; 16 rows is the smallest tile ``tl.dot`` accepts, and only very large
    batches get 32 so that the weight traffic per row halves. Hidden tiles of up to 32
    columns and reduction chunks of 16 entries of ``h``, with 4 warps, keep the four gate
    accumulators and the ``tl.dot`` operands in registers without spilling in any dtype or
    precision (``benchmarks/kernel_resources.py``; exact fp32 dots run on the FMA units,
    which hold a whole ``K`` chunk of both operands per thread). ptxas gets the whole
    register file (``maxnreg`` 255): this design runs one program per SM, and left to
    itself ptxas aims at 128 or even 32 registers and spills. ``dtype`` is part of the
    contract (the chunk that fits depends on it) although every dtype fits these tiles.
    """
    del dtype
    block_b = 32 if batch >= 1024 else 16
    block_h = _pow2_tile(hidden, 16, 32)
    block_k = _pow2_tile(proj, 16, 16)
    num_warps = 8 if block_b * block_h > 512 else 4
    return RecurrenceConfig(block_b, block_h, block_k, num_warps, num_stages=1, maxnreg=255)


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: TF32 for fp32 unless ``torch.backends.cudnn.allow_tf32``
    is False, then exact fp32 ("ieee").

    ``nn.LSTM`` on CUDA runs fp32 through cuDNN, which uses TF32 unless that switch is off
    (it is on by default), so the drop-in follows the same switch: the same precision and
    speed trade as what it replaces. Read at every launch, so flipping it takes effect at
    the next call. Half-precision operands always use the tensor cores in their own type
    ("tf32" is then ignored by Triton).
    """
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def unsupported_reason(
    device: torch.device, dtype: torch.dtype, hidden_size: int, proj_size: int = 0
) -> str | None:
    """None when the kernels can run this request, else a human-readable reason."""
    device = torch.device(device)
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported by the Triton kernels (float32, bfloat16, float16)"
    if hidden_size > MAX_HIDDEN:
        return f"hidden size {hidden_size} > {MAX_HIDDEN} supported by the Triton kernels"
    if proj_size > MAX_HIDDEN:
        return f"proj_size {proj_size} > {MAX_HIDDEN} supported by the Triton kernels"
    if device.type == "cpu":
        if not interpreting():
            return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
        if dtype == torch.bfloat16:
            # Triton's CPU interpreter computes bfloat16 tl.dot wrongly (numpy has no bf16).
            return "bfloat16 is not supported by the Triton CPU interpreter (it runs on CUDA)"
    elif device.type != "cuda":
        return f"device type {device.type!r} is not supported by the Triton kernels"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"compute capability {major}.{minor} < 7.0 (tl.dot needs tensor cores)"
        if dtype == torch.bfloat16 and major < 8:
            return f"bfloat16 needs compute capability >= 8.0, this GPU is {major}.{minor}"
    return None


# The kernel designs behind the "triton" backend (docs/kernels.md, "Choosing a design"):
# batch-tiled (kernels/lstm.py), weight-stationary persistent and one-launch-per-step
# (kernels/persistent.py).
DESIGNS = ("batch", "persistent", "step")
DESIGN_ENV = "FASTLSTM_TRITON_DESIGN"

# Latency model constants (H200 class GPU; docs/kernels.md derives them). Per-SM L2->SM
# bandwidth bounds the batch-tiled design, which streams all of W_hh through each program
# on every step; the other terms are fixed costs per step.
_L2_BYTES_PER_US_PER_SM = 65e3  # ~65 GB/s per SM sustained for a dependent stream
_BATCH_FIXED_US = 1.5  # CTA barriers, loop overheads, h/c state round trips per step
# Grid barrier (~1-1.5 us), the L2 latency of reading h (~0.6 us), the cell (~0.5 us):
# kernels/persistent.py's model.
_PERSISTENT_FIXED_US = 2.5
_PERSISTENT_H_BYTES_PER_US = 100e3  # each program reads all of h_{t-1} from L2 per step
# tl.dot throughput per SM (mma.sync, about half the wgmma peak; FMA units for "ieee").
_FLOPS_PER_US_PER_SM = {"ieee": 0.43e6, "tf32": 1.9e6, "half": 3.8e6}
_STEP_LAUNCH_US = 6.0  # host-side Triton launch per step and barrier (5-20 us), no graph
_BLOCK_B = 16  # rows per program of the batch-tiled design at the benchmark batches
_H200_SMS = 132


def forced_design() -> str | None:
    """The design ``FASTLSTM_TRITON_DESIGN`` forces (``batch``, ``persistent``, ``step``),
    or None when it is unset or empty (then :func:`choose_design`'s rule decides).

    Read at every call, so a benchmark can flip it between calls.

    Raises:
        ValueError: any other value.
    """
    value = os.environ.get(DESIGN_ENV, "").strip()
    if not value:
        return None
    if value not in DESIGNS:
        raise ValueError(
            f"{DESIGN_ENV}={value!r} is not a kernel design: use one of "
            f"{', '.join(DESIGNS)}, or leave it unset for the selection rule"
        )
    return value


def design_step_us(
    design: str,
    dtype: torch.dtype,
    batch: int,
    hidden: int,
    proj: int,
    precision: str | None = None,
) -> float:
    """Modelled forward time per step in microseconds on an H200 (docs/kernels.md).

    - ``batch``: ``ceil(B/16)`` programs, each streaming ``4H*P`` (+ ``P*H``) weight
      elements from L2 every step at one SM's bandwidth, or computing its ``2*16*P*4H``
      FLOPs, whichever is slower, plus fixed per-step costs; waves when there are more
      programs than SMs.
    - ``persistent``: the weight slice stays on chip; per step each program reads all of
      ``h_{t-1}`` (``16*P`` elements), computes its share of the FLOPs (the grid fills the
      SMs) and meets the others at a grid barrier (two with a projection).
    - ``step``: the persistent step's work plus a kernel launch per barrier, and the weight
      slice reloaded from L2 every step (small: ``4*BLOCK_HS*P`` elements).

    ``precision`` is the fp32 dot precision (``dot_precision(dtype)`` when None): exact
    fp32 dots run on the FMA units, at a fraction of the tensor cores' rate.
    """
    elem = torch.empty((), dtype=dtype).element_size()
    precision = precision or dot_precision(dtype)
    P = proj or hidden
    weights = (4 * hidden * P + (P * hidden if proj else 0)) * elem
    flops = 2 * batch * (4 * hidden * P + (P * hidden if proj else 0))
    rate = _FLOPS_PER_US_PER_SM[precision if dtype == torch.float32 else "half"]
    barriers = 2 if proj else 1
    h_read = _BLOCK_B * P * elem / _PERSISTENT_H_BYTES_PER_US
    tiles = (batch + _BLOCK_B - 1) // _BLOCK_B
    if design == "batch":
        waves = (tiles + _H200_SMS - 1) // _H200_SMS
        stream = max(weights / _L2_BYTES_PER_US_PER_SM, flops / tiles / rate)
        return waves * (_BATCH_FIXED_US * barriers + stream)
    # The weight-stationary designs spread the hidden units over (nearly) every SM.
    programs = min(_H200_SMS, tiles * ((hidden + 3) // 4))
    compute = flops / programs / rate
    if design == "persistent":
        return barriers * _PERSISTENT_FIXED_US + h_read + compute
    if design == "step":
        # The launch replaces the barrier; the slice is reloaded instead of resident.
        return barriers * (_STEP_LAUNCH_US + 1.0) + h_read + compute
    raise ValueError(f"unknown design {design!r} (expected one of {', '.join(DESIGNS)})")


def design_unsupported_reason(
    design: str,
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    hidden: int,
    proj: int,
) -> str | None:
    """None when ``design`` can serve this call, else why not."""
    if design == "batch":
        return unsupported_reason(device, dtype, hidden, proj)
    # Imported here: kernels/persistent.py imports this module.
    from .persistent import persistent_unsupported_reason

    return persistent_unsupported_reason(design, device, dtype, batch, hidden, proj)


def choose_design(
    device: torch.device,
    dtype: torch.dtype,
    batch: int,
    hidden: int,
    proj: int,
    has_lengths: bool,
) -> tuple[str, str]:
    """``(design, reason)`` for one call: the forced design, else the rule.

    The rule (docs/kernels.md): under the interpreter ``batch`` (programs run one after
    another there, so no design is faster, and the batch-tiled kernels are the reference
    design the tests exercise most); on a GPU, among the designs that can serve the call,
    the one with the smallest modelled time per step (:func:`design_step_us`), ties going to
    ``batch``, then ``persistent``. Lengths do not change the choice: every design loops to
    the longest sequence of its batch tile and skips finished rows alike.

    Raises:
        ValueError: ``FASTLSTM_TRITON_DESIGN`` holds an unknown value.
        RuntimeError: the forced design cannot serve this call (the message says why).
    """
    del has_lengths  # part of the contract; see the docstring
    device = torch.device(device)
    forced = forced_design()
    if forced is not None:
        reason = design_unsupported_reason(forced, device, dtype, batch, hidden, proj)
        if reason is not None:
            raise RuntimeError(
                f"{DESIGN_ENV}={forced} forces the {forced!r} kernel design, which cannot run "
                f"this call: {reason}"
            )
        return forced, f"forced by {DESIGN_ENV}={forced}"
    if device.type != "cuda":
        return "batch", "the interpreter runs programs one at a time: batch-tiled kernels"
    times = {}
    for design in DESIGNS:
        if design_unsupported_reason(design, device, dtype, batch, hidden, proj) is None:
            times[design] = design_step_us(design, dtype, batch, hidden, proj)
    if not times:
        return "batch", "no design can serve this call (the launcher reports why)"
    best = min(times, key=lambda d: (times[d], DESIGNS.index(d)))
    modelled = ", ".join(f"{d} {t:.1f}" for d, t in times.items())
    return best, f"smallest modelled us/step ({modelled})"
