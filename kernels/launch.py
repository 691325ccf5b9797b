"""Launch settings: the target GPU, every design's tiles and warps, why a design cannot serve a
call, and the one door every kernel launch goes through.

Pure functions of (target, dtype, shape): no autotuning, so a shape on a GPU always runs the
same code and tests and benchmarks are reproducible. Imports torch only; the kernel files
import this one.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch

__all__ = [
    "DESIGNS",
    "DESIGN_ENV",
    "H200",
    "MAX_HIDDEN",
    "SUPPORTED_DTYPES",
    "BatchConfig",
    "PersistentConfig",
    "Target",
    "batch_config",
    "design_step_us",
    "dot_precision",
    "interpreting",
    "launch",
    "persistent_config",
    "target_of",
    "why_not",
]

# The kernel designs, in fallback order: when one fails to launch the next one runs, and the
# batch-tiled design, which needs neither co-residency nor a resident slice, comes last.
DESIGNS = ("persistent", "step", "batch")
DESIGN_ENV = "FASTLSTM_TRITON_DESIGN"
# Beyond this a batch-tiled program streams more than 32 MiB of W_hh per step; cuDNN or the
# reference serve such sizes better.
MAX_HIDDEN = 2048
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def pow2(n: int, lo: int = 16) -> int:
    """The next power of two ``>= n``, at least ``lo`` (``tl.dot`` needs sides >= 16)."""
    return max(lo, 1 << max(0, int(n) - 1).bit_length())


def cdiv(a: int, b: int) -> int:
    return -(-int(a) // int(b))


@dataclass(frozen=True)
class Target:
    """What a launch plan depends on: the GPU's size, or the interpreter.

    ``smem_per_block`` is the most dynamic shared memory one program may use (the opt-in
    limit: 232,448 bytes on sm_90). The interpreter plans like an H200 except that the
    persistent design runs one program there (programs run one after another, so a grid
    barrier between several could never complete).
    """

    name: str
    sms: int
    smem_per_block: int
    capability: tuple[int, int]
    interpreter: bool = False


H200 = Target("NVIDIA H200 (planned)", sms=132, smem_per_block=232_448, capability=(9, 0))
_INTERPRETER = Target("Triton interpreter", 132, 232_448, (9, 0), interpreter=True)


@functools.cache
def _cuda_target(index: int) -> Target:
    props = torch.cuda.get_device_properties(index)
    smem = getattr(props, "shared_memory_per_block_optin", 0) or 232_448
    return Target(props.name, props.multi_processor_count, smem, (props.major, props.minor))


def target_of(device: torch.device) -> Target:
    """The target a call on ``device`` plans for (one source of the SM count)."""
    device = torch.device(device)
    if device.type == "cuda":
        return _cuda_target(device.index if device.index is not None else 0)
    return _INTERPRETER


def dot_precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision: TF32 for fp32 unless ``torch.backends.cudnn.allow_tf32``
    is False, then exact fp32 (``"ieee"``).

    ``nn.LSTM`` runs fp32 through cuDNN, which uses TF32 unless that switch is off (it is on
    by default), so the drop-in follows the same switch. Read at every launch. Half-precision
    operands always use the tensor cores in their own type.
    """
    if dtype == torch.float32 and not torch.backends.cudnn.allow_tf32:
        return "ieee"
    return "tf32"


def _elem(dtype: torch.dtype) -> int:
    return dtype.itemsize


@dataclass(frozen=True)
class BatchConfig:
    """Tiles of the batch-tiled kernels: ``block_b`` rows per program, the hidden dimension in
    ``block_h`` columns per gate, the reduction over ``h`` in ``block_k`` chunks; ``maxnreg``
    is the register budget per thread given to ptxas."""

    block_b: int
    block_h: int
    block_k: int
    num_warps: int
    num_stages: int = 1
    maxnreg: int | None = 255

    def grid(self, batch: int) -> tuple[int]:
        return (cdiv(batch, self.block_b),)


def batch_config(batch: int, hidden: int, proj: int = 0) -> BatchConfig:
    """Tiles for a ``[batch]`` x ``hidden`` (x ``proj``) recurrence.

    The loop is latency-bound, so more programs (smaller batch tiles) run more of the batch in
    parallel: 16 rows, the smallest tile ``tl.dot`` accepts, and 32 only for very large
    batches (the weight traffic per row halves). Hidden tiles of up to 32 columns (16 with
    32 rows: at most 512 accumulator elements per gate) and reduction chunks of 16 keep the
    four gate accumulators and the dot operands in registers in every dtype and precision, at
    4 warps: 32 x 32 tiles at 8 warps took all 255 registers and spilled in Triton 3.6 (half
    dtypes with a projection). ptxas gets the whole register file (``maxnreg`` 255): one
    program per SM, and left to itself ptxas aims lower and spills.
    """
    block_b = 32 if batch >= 1024 else 16
    block_h = max(16, min(32, pow2(hidden), 512 // block_b))
    block_k = 16
    del proj  # every projection size fits these tiles
    return BatchConfig(block_b, block_h, block_k, num_warps=4)


@dataclass(frozen=True)
class PersistentConfig:
    """Tiles of the weight-stationary kernels (``persistent`` and ``step`` designs).

    ``block_hs`` hidden units (all four gates) and ``block_b`` batch rows per program; the
    rest is derived: projection columns per program (``block_ps``), slices summed per chunk
    in backward (``block_ns``), and the shared memory a program needs (:meth:`smem_bytes`).
    ``step_cell_warps`` overrides ``num_warps`` for the step design's forward cell kernel.
    ``maxnreg`` is the register budget per thread given to ptxas: 255, the whole register
    file at 8 warps (one program per SM); left to itself ptxas capped some of these kernels
    at 32 to 128 registers and spilled (docs/kernels.md, "Registers and spills").
    """

    block_b: int
    block_hs: int
    num_warps: int
    num_stages: int = 1
    step_cell_warps: int | None = None
    maxnreg: int | None = 255

    def warps(self, kernel: str) -> int:
        """Warps of one kernel (``persistent_fwd``, ``step_fwd_cell``, ...: the names the
        launchers in ``persistent.py`` ask for)."""
        if kernel == "step_fwd_cell" and self.step_cell_warps:
            return self.step_cell_warps
        return self.num_warps

    def n_slices(self, hidden: int) -> int:
        return cdiv(hidden, self.block_hs)

    def grid(self, batch: int, hidden: int) -> tuple[int, int]:
        return (self.n_slices(hidden), cdiv(batch, self.block_b))

    def block_ps(self, hidden: int, proj: int) -> int:
        return pow2(cdiv(proj, self.n_slices(hidden)))

    def block_ns(self, hidden: int, cols: int) -> int:
        # Slices summed per tl.sum in backward. Each chunk costs one dependent L2 round trip,
        # so all slices at once while the [BLOCK_NS, BLOCK_B, cols] load stays within 16
        # registers per thread (4K elements at 8 warps). 8K elements spilled in Triton 3.6:
        # up to 568 bytes at B = 1 (64 and 128 slices at H = 256 and 512), 36 with 16 x 16
        # tiles at H = 512.
        cap = max(1, 16 * 32 * self.num_warps // (self.block_b * cols))
        return max(1, min(pow2(self.n_slices(hidden), 1), cap))

    def resident_bytes(self, hidden: int, proj: int, elem: int) -> int:
        """The slice of ``W_hh`` (and ``W_hr``) a program keeps for the whole loop."""
        P = proj or hidden
        w = 4 * self.block_hs * pow2(P) * elem
        if proj:
            # forward W_hr^T rows [BLOCK_HK, BLOCK_PS]; backward W_hr columns [BLOCK_P, BLOCK_HS]
            w += max(pow2(hidden) * self.block_ps(hidden, proj), pow2(P) * self.block_hs) * elem
        return w

    def smem_bytes(self, hidden: int, proj: int, elem: int) -> int:
        """Upper bound of a program's shared memory: the resident slice; a ``[BLOCK_B, P]``
        (with a projection ``[BLOCK_B, H]``) row block, counted in fp32: the staged ``h``
        (or ``r``) tile that feeds ``tl.dot`` in the weight dtype, or the fp32 ``da W_hh``
        partial backward converts to another layout before its store, which in bf16/fp16 is
        the larger (a half-width count fell 1-30 KB short); and twice the fp32
        ``[BLOCK_B, 4*BLOCK_HS]`` scratch of the layout conversions between a dot's result
        and the interleaved gates (Triton 3.6 keeps two live in backward: 4 KB over a single
        one at ``H = 64``, 16 x 32 tiles). ``benchmarks/kernel_resources.py`` checks it
        against what Triton allocates, for every tile the designs can pick."""
        rows = self.block_b * max(pow2(proj or hidden), pow2(hidden) if proj else 0) * 4
        scratch = 2 * self.block_b * 4 * self.block_hs * 4
        return self.resident_bytes(hidden, proj, elem) + rows + scratch


def max_tile_units(hidden: int, proj: int) -> int:
    """The most ``block_b * block_hs`` (rows x hidden units) one program of the
    weight-stationary kernels may own without spilling.

    Each thread holds its share of the step's ``[BLOCK_B, 4*BLOCK_HS]`` gate tile, the
    cell's temporaries and the ``[BLOCK_B, P]`` row block; past these sizes the kernels use
    all 255 registers per thread at 8 warps (the whole register file) and spill, in Triton
    3.6 and 3.9 (``benchmarks/kernel_resources.py``; docs/kernels.md, "Registers and
    spills"): 512 without a projection up to ``H = 256`` (1,024 spilled), 256 at ``H = 512``
    (512 spilled in fp32) and with a projection (512 spilled at every ``H``).
    """
    return 512 if not proj and pow2(hidden) <= 256 else 256


# Planned on every call (and asked again by plan_why_not): a pure function of hashable
# arguments, so it is worked out once per shape class.
@functools.lru_cache(maxsize=512)
def persistent_config(
    target: Target, design: str, dtype: torch.dtype, batch: int, hidden: int, proj: int
) -> PersistentConfig:
    """Deterministic tiles of the weight-stationary designs.

    Under the interpreter the ``persistent`` design gets one program (all of ``H`` and
    ``B``). Otherwise: the smallest batch tile ``tl.dot`` accepts (16 rows, so the batch is
    spread over as many programs as possible), then the fewest hidden units per program (at
    least 4, so the four interleaved gates give ``tl.dot`` 16 columns; 16 with a projection,
    whose backward dot has only the slice's units as columns) for which the grid fits one
    program per SM, within :func:`max_tile_units`; when that slice does not fit the shared
    memory, the next wider batch tile (fewer tiles, so more SMs per tile and narrower
    slices). Both designs use the same tiles on a GPU, so their saved tensors are the same
    computation. When no tiling fits the SMs (the persistent design is refused), the step
    design gets 16-row tiles with the widest slice the register and shared-memory limits
    allow: the fewest programs per launch, each reading all of ``h``.
    """
    if design == "persistent" and target.interpreter:
        return PersistentConfig(block_b=pow2(batch), block_hs=pow2(hidden), num_warps=4)
    elem = _elem(dtype)
    lo = 16 if proj else 4
    top = pow2(hidden, lo)
    units = max_tile_units(hidden, proj)
    choice = None
    for block_b in (16, 32, 64, 128):
        if block_b * lo > units:
            break
        hs = lo
        while (
            hs < top
            and block_b * hs * 2 <= units
            and math.prod(PersistentConfig(block_b, hs, 4).grid(batch, hidden)) > target.sms
        ):
            hs *= 2
        cfg = PersistentConfig(block_b, hs, 4)
        if math.prod(cfg.grid(batch, hidden)) > target.sms:
            break  # the widest slice registers allow leaves more programs than SMs
        if cfg.smem_bytes(hidden, proj, elem) <= target.smem_per_block:
            choice = cfg
            break
        if block_b >= batch:
            break
    if choice is None:  # serves the step design; the persistent one is refused
        hs = max(lo, min(top, units // 16))
        while hs > lo and PersistentConfig(16, hs, 4).smem_bytes(hidden, proj, elem) > (
            target.smem_per_block
        ):
            hs //= 2
        choice = PersistentConfig(16, hs, 4)
    # 8 warps (with maxnreg 255, the whole register file) unless the tile is the smallest
    # and the resident slice small: 4 warps there halve the threads a barrier waits for.
    small = choice.block_b * choice.block_hs < 128
    num_warps = 4 if small and choice.resident_bytes(hidden, proj, elem) < 16 * 1024 else 8
    return PersistentConfig(choice.block_b, choice.block_hs, num_warps)


def why_not(
    device: torch.device,
    dtype: torch.dtype,
    hidden: int,
    proj: int = 0,
    *,
    batch: int = 1,
    design: str | None = None,
) -> str | None:
    """None when the kernels can serve this call, else a human-readable reason.

    Without ``design``: the checks every design shares (dtype, size, device). With one of
    :data:`DESIGNS`: also that design's own limits (resident slice within shared memory,
    co-resident grid, int32 offsets) at the tiles it would use on ``device``.
    """
    device = torch.device(device)
    if dtype not in SUPPORTED_DTYPES:
        return f"dtype {dtype} is not supported by the Triton kernels (float32, bfloat16, float16)"
    if hidden > MAX_HIDDEN:
        return f"hidden size {hidden} > {MAX_HIDDEN} supported by the Triton kernels"
    if proj > MAX_HIDDEN:
        return f"proj_size {proj} > {MAX_HIDDEN} supported by the Triton kernels"
    if device.type == "cpu":
        if not interpreting():
            return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
        if dtype == torch.bfloat16:
            # The interpreter computes bfloat16 tl.dot wrongly (numpy has no bf16).
            return "bfloat16 is not supported by the Triton CPU interpreter (it runs on CUDA)"
    elif device.type != "cuda":
        return f"device type {device.type!r} is not supported by the Triton kernels"
    else:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 7:
            return f"compute capability {major}.{minor} < 7.0 (tl.dot needs tensor cores)"
        if dtype == torch.bfloat16 and major < 8:
            return f"bfloat16 needs compute capability >= 8.0, this GPU is {major}.{minor}"
    if design is None or design == "batch":
        return None
    if design not in DESIGNS:
        return f"unknown kernel design {design!r} (expected one of {', '.join(DESIGNS)})"
    return plan_why_not(target_of(device), design, dtype, batch, hidden, proj)


def plan_why_not(
    target: Target, design: str, dtype: torch.dtype, batch: int, hidden: int, proj: int
) -> str | None:
    """A weight-stationary design's own limits at the tiles it would use on ``target``."""
    cfg = persistent_config(target, design, dtype, batch, hidden, proj)
    if 2 * cfg.n_slices(hidden) * batch * max(4 * hidden, proj) >= 2**31:
        return f"batch {batch} x hidden {hidden} state buffers exceed int32 offsets"
    if target.interpreter:
        return None  # one program ("persistent") or any grid ("step")
    elem = _elem(dtype)
    smem = cfg.smem_bytes(hidden, proj, elem)
    if smem > target.smem_per_block:
        return (
            f"the {design} design's resident weight slice, h tile and gate scratch "
            f"({smem:,} bytes of shared memory per program at {cfg.block_hs} hidden units x "
            f"{cfg.block_b} rows) exceed the {target.smem_per_block:,} bytes a program may use "
            f"(hidden {hidden}, proj_size {proj})"
        )
    if dot_precision(dtype) == "ieee" and (cfg.block_hs > 8 or pow2(proj or hidden) > 64):
        # Exact fp32 tl.dot runs on the FMA units, whose operands live in registers: a slice
        # wider than 8 units, or of more than 64 inputs, spills (128 inputs did in Triton
        # 3.6: 96-696 bytes), while TF32/half dots keep it in shared memory.
        return (
            f"exact fp32 dots (TF32 disabled) cannot keep a {cfg.block_hs}-unit x "
            f"{proj or hidden}-input W_hh slice resident without spilling"
        )
    if design == "persistent":
        n_h, n_b = cfg.grid(batch, hidden)
        if n_h * n_b > target.sms:
            return (
                f"the persistent design needs {n_h} x {n_b} co-resident programs for batch "
                f"{batch}, hidden {hidden}; this GPU has {target.sms} SMs (one program per SM, "
                f"at most {max_tile_units(hidden, proj)} rows x hidden units each: more spill "
                "registers)"
            )
    return None


# Latency model (docs/kernels.md, "Choosing a design"). Estimates for an H200-class GPU, not
# measurements: the GPU check's table replaces the model wherever it has measured a shape.
_L2_BYTES_PER_US_PER_SM = 65e3  # a dependent stream of W_hh from L2 into one SM
_BATCH_FIXED_US = 1.5  # CTA barriers, loop overheads, h/c state round trips per step
# A grid barrier (~1.5 us: release reduction, acquire polls, ~10 bar.sync per step), the L2
# latency of reading h, one dependent chain of 32 MMAs per warp and the cell: 3.5-4.5 us
# per forward step at H = 256.
_PERSISTENT_FIXED_US = 3.3
_PERSISTENT_H_BYTES_PER_US = 100e3  # each program reads all of h_{t-1} from L2 per step
_FLOPS_PER_US_PER_SM = {"ieee": 0.43e6, "tf32": 1.9e6, "half": 3.8e6}
_STEP_LAUNCH_US = 15.0  # a Triton launch with ~30 arguments from Python: 10-25 us
_BLOCK_B = 16


def design_step_us(
    design: str,
    dtype: torch.dtype,
    batch: int,
    hidden: int,
    proj: int,
    precision: str | None = None,
    sms: int = H200.sms,
) -> float:
    """Modelled forward time per step in microseconds (an estimate; docs/kernels.md).

    - ``batch``: ``ceil(B/16)`` programs, each streaming ``4H*P`` (+ ``P*H``) weight
      elements from L2 every step at one SM's bandwidth, or computing its share of the
      FLOPs, whichever is slower, plus fixed per-step costs; waves past one program per SM.
    - ``persistent``: the slice stays on chip; per step each program reads all of
      ``h_{t-1}``, computes its share and meets the others at a grid barrier (two with a
      projection).
    - ``step``: the persistent step's work plus a kernel launch per barrier.
    """
    elem = _elem(dtype)
    precision = precision or dot_precision(dtype)
    P = proj or hidden
    weights = (4 * hidden * P + (P * hidden if proj else 0)) * elem
    flops = 2 * batch * (4 * hidden * P + (P * hidden if proj else 0))
    rate = _FLOPS_PER_US_PER_SM[precision if dtype == torch.float32 else "half"]
    barriers = 2 if proj else 1
    h_read = _BLOCK_B * P * elem / _PERSISTENT_H_BYTES_PER_US
    tiles = cdiv(batch, _BLOCK_B)
    if design == "batch":
        waves = cdiv(tiles, sms)
        stream = max(weights / _L2_BYTES_PER_US_PER_SM, flops / tiles / rate)
        return waves * (_BATCH_FIXED_US * barriers + stream)
    programs = min(sms, tiles * cdiv(hidden, 4))
    compute = flops / programs / rate
    if design == "persistent":
        return barriers * _PERSISTENT_FIXED_US + h_read + compute
    if design == "step":
        return barriers * (_STEP_LAUNCH_US + 1.0) + h_read + compute
    raise ValueError(f"unknown design {design!r} (expected one of {', '.join(DESIGNS)})")


def launch(
    kernel,
    grid: tuple[int, ...],
    *,
    num_warps: int,
    num_stages: int = 1,
    cooperative: bool = False,
    maxnreg: int | None = None,
    **kernel_args,
) -> None:
    """``kernel[grid](**kernel_args)`` with launch options: the one door every launch uses.

    ``cooperative`` asks the driver to make all programs resident at once
    (``launch_cooperative_grid``), which a grid barrier needs; ``maxnreg`` caps registers
    per thread. The interpreter ignores both. ``benchmarks/kernel_resources.py`` replaces
    this function to compile, rather than run, what the launchers would launch.
    """
    options = {"num_warps": num_warps, "num_stages": num_stages}
    if cooperative:
        options["launch_cooperative_grid"] = True
    if maxnreg is not None:
        options["maxnreg"] = maxnreg
    tensor = next(v for v in kernel_args.values() if isinstance(v, torch.Tensor))
    if tensor.device.type == "cuda":
        with torch.cuda.device(tensor.device):
            kernel[grid](**kernel_args, **options)
    else:
        kernel[grid](**kernel_args, **options)
