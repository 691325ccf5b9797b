"""Weight-stationary LSTM recurrence: the hidden units split across programs (issue 10).

Two designs share one per-step body, written once as ``@triton.jit`` helpers:

- ``"persistent"``: one cooperative launch runs the whole time loop; the programs that share
  a batch tile meet at a grid barrier after every step (two with ``proj_size``);
- ``"step"``: one launch per time step (two with ``proj_size``); the kernel boundary is the
  barrier. It needs no co-residency, so it serves any grid, and it is what the interpreter
  tests run with several hidden slices and batch tiles.

Work split. Program ``(i_h, i_b)`` owns ``BLOCK_HS`` hidden units with all four of their gates
and ``BLOCK_B`` rows of the batch. Its slice of ``W_hh`` (rows ``g*H + unit``, all ``P``
columns) is loaded once before the time loop as a ``[BLOCK_P, 4*BLOCK_HS]`` tile with the
gates interleaved per unit (column ``4*u + g``), so one ``tl.dot`` gives all four gate
pre-activations of its units and the cell update stays local; ``c`` stays in registers (fp32).
``h_t`` is exchanged through a global double buffer ``[2, B, P]`` held in the weight dtype:
every ``tl.dot`` casts ``h`` to that dtype anyway, so the values are the same as an fp32
buffer's and the bytes every program reads per step halve in bf16/fp16.
With a projection, ``r = o*tanh(c)`` of the slice goes to a global ``[B, H]`` buffer, a
barrier, then program ``i_h`` computes ``h[:, i_h*BLOCK_PS : (i_h+1)*BLOCK_PS] = r W_hr^T``
with its resident ``W_hr`` rows: a second barrier per step.

Backward, same split and the same resident tile. Per step a program computes the gate
gradients ``da`` of its units (from the total ``dh`` of its units and its ``dc`` in
registers), stores them to ``d_xp``, and its partial ``da_slice W_hh_slice`` ``[BLOCK_B, P]``
into ``dh_part[parity, i_h]`` (double-buffered). After the barrier each program sums the
partials for its columns over all slices in slice order (chunks of ``BLOCK_NS`` slices,
each a fixed-shape ``tl.sum``), so results are identical run to run. A row's first step
(``s = len - 1``) takes ``d_hn`` instead, which also makes the never-written partials of
the first step irrelevant. ``d_h0`` is the partials of step ``s = 0`` summed over slices
by one reduction after the kernels. With a projection, ``dh`` of the program's ``P`` slice plus
``d_out`` goes to ``dh_tot`` (and ``d_hs``), a barrier, then ``dr = dh_tot W_hr[:, units]``.

Grid barrier (persistent only). A counting barrier in the spirit of Inductor's
``x_grid_barrier``: CTA barrier, one release ``atomic_add`` of 1 on the batch tile's int32
counter, acquire polls until it reaches ``(barriers so far) x (programs per tile)``, CTA
barrier. The counter is zeroed per launch (the flip bit of Inductor's version exists so that
the semaphore never needs resetting; here a zeroed int32 avoids unsigned wrap-around
arithmetic). The spin is bounded (``SPIN_LIMIT`` polls, ~seconds); on timeout the program
sets an error flag, stops waiting at later barriers, and the launcher raises a RuntimeError.
Loads of data written by other programs bypass L1 (``.cg``). Only programs that are all
resident at once can meet: the launch is cooperative and the grid never exceeds one program
per SM (:func:`persistent_unsupported_reason`). Under the interpreter programs run one after
another, so ``"persistent"`` runs one program there (all of ``H`` and ``B``).

Offsets. Rows of the ``[T, B, *]`` tensors are int64 (``position * B + row``); offsets
inside the per-step ``[B, *]`` state buffers (``h``, ``r``, ``dh_tot``, the
``[2, slices, B, P]`` partials) are int32, which the launcher guarantees fit
(:func:`persistent_unsupported_reason`): the loop-invariant ones are hoisted out of the
time loop, at half the registers of int64.

Latency model (H200: 132 SMs, ~4.8 TB/s HBM, ~50 MB L2, ~100 GB/s L2->SM per SM; B=64,
P=H; the configs :func:`persistent_config` picks). Per step and program the forward reads
``h`` (``BLOCK_B*P*w`` bytes from L2, ~0.6 us latency + bytes / ~100 GB/s), runs one
``[BLOCK_B, P] x [P, 4*BLOCK_HS]`` ``tl.dot`` against the resident slice (``4*BLOCK_HS*P*w``
bytes, kept in shared memory by Triton: ldmatrix + mma.sync each step), the pointwise cell
with its layout conversions (~0.5-0.7 us incl. the ``xp`` load, which does not depend on
``h``) and meets the others at the barrier (~1-1.5 us: one release reduction and acquire
polls on the tile's counter). Backward adds the partial-product store, one chunked read of
all slices' partials (``BLOCK_B*H*4`` bytes, one chunk for H <= 512) and a second dot.

=====  ===================  ==========  ============  ===========  ==========  ==========
H      BLOCK_HS x BLOCK_B   programs    resident W    h read/step  fwd us/st   bwd us/st
=====  ===================  ==========  ============  ===========  ==========  ==========
128    4 x 16               32 x 4      8 / 4 KB      8 / 4 KB     ~2.7        ~4
256    8 x 16               32 x 4      32 / 16 KB    16 / 8 KB    ~3.0        ~4.5
512    16 x 16              32 x 4      128 / 64 KB   32 / 16 KB   ~3.8 (3.2)  ~5.5 (5)
=====  ===================  ==========  ============  ===========  ==========  ==========

(fp32 with TF32 / bf16; bf16 in brackets where it differs.) Forward+backward: ~6.7 / 7.5 /
9.3 us per step, i.e. ~1.7 / 1.9 / 2.4 ms of recurrence at T=256 for H = 128 / 256 / 512,
against cuDNN's ~6.8 us per step (2.7 + 4.1, its small-H persistent kernel, H <= 128) and
~10-20 us (STANDARD: a GEMM and a pointwise kernel per step and pass, ~5-10 us each, at
H >= 256): parity at H=128, ~1.3-2x above it. Unmeasured: estimates until a GPU is lent. The
batch-tiled design instead streams ``4*H*P*w`` bytes of ``W_hh`` per step through each of
only 4 SMs at B=64 (>= 4 / 17 / 67 us per fp32 forward step). The step design pays one
launch per step (two with a projection; ~5-20 us of host-side Triton launch overhead unless
captured in a CUDA graph) plus a reload of its slice from L2: a fallback for grids that
cannot be co-resident, not a fast path. Exact fp32 (TF32 off) runs ``tl.dot`` on FMA units,
whose operands live in registers: served only where that does not spill (see
:func:`persistent_unsupported_reason`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from .launch import (
    KernelBuild,
    dot_precision,
    launch,
    unsupported_reason,
)
from .lstm import _sigmoid, _tanh, _tile_lengths

__all__ = [
    "DESIGNS",
    "PersistentConfig",
    "persistent_backward",
    "persistent_config",
    "persistent_forward",
    "persistent_unsupported_reason",
    "resource_cases",
]

DESIGNS = ("persistent", "step")
# Polls of the barrier counter before a program gives up (an L2 atomic round trip each,
# so on the order of seconds): far beyond any legitimate wait, short of a hang.
SPIN_LIMIT = 1 << 22
# Shared memory per program a config may plan for (sm_90 allows 227 KiB per block): Triton
# keeps the loop-invariant tl.dot operand (the resident slice) there and stages the step's
# h tile; PersistentConfig.smem_bytes estimates both, within ~4 KiB of what
# resource_cases() measures.
MAX_SMEM_BYTES = 200 * 1024


def _pow2(n: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(1, n)))


@dataclass(frozen=True)
class PersistentConfig:
    """Tiles and launch options of the weight-stationary kernels.

    ``block_hs`` hidden units (all four gates) and ``block_b`` batch rows per program;
    derived: the projection columns per program (``block_ps``), the slices summed per chunk
    in backward (``block_ns``) and the shared memory the resident slice needs.
    ``num_warps`` serves every kernel but the step design's forward cell kernel when
    ``step_cell_warps`` is set (:meth:`warps`).
    """

    block_b: int
    block_hs: int
    num_warps: int
    num_stages: int = 1
    step_cell_warps: int | None = None  # the step design's forward cell kernel, if different

    def warps(self, kernel: str) -> int:
        """Warps of one kernel (a :func:`resource_cases` name, e.g. ``"step_fwd_p0"``)."""
        if kernel == "step_fwd_p0" and self.step_cell_warps:
            return self.step_cell_warps
        return self.num_warps

    def n_slices(self, hidden: int) -> int:
        return triton.cdiv(hidden, self.block_hs)

    def grid(self, batch: int, hidden: int) -> tuple[int, int]:
        return (self.n_slices(hidden), triton.cdiv(batch, self.block_b))

    def block_ps(self, hidden: int, proj: int) -> int:
        return _pow2(triton.cdiv(proj, self.n_slices(hidden)))

    def block_ns(self, hidden: int, cols: int) -> int:
        # Slices summed per tl.sum in backward. Each chunk costs one dependent L2 round trip,
        # so all slices at once where the [BLOCK_NS, BLOCK_B, cols] load stays within 8K
        # elements (32 registers per thread at 8 warps): one chunk for every H <= 512 at B=64.
        cap = max(1, 8192 // (self.block_b * cols))
        return max(1, min(triton.next_power_of_2(self.n_slices(hidden)), cap))

    def resident_bytes(self, hidden: int, proj: int, elem: int) -> int:
        P = proj or hidden
        w = 4 * self.block_hs * _pow2(P) * elem
        if proj:
            # forward W_hr^T rows [BLOCK_HK, BLOCK_PS]; backward W_hr columns [BLOCK_P, BLOCK_HS]
            w += max(_pow2(hidden) * self.block_ps(hidden, proj), _pow2(P) * self.block_hs) * elem
        return w

    def smem_bytes(self, hidden: int, proj: int, elem: int) -> int:
        staged = self.block_b * max(_pow2(proj or hidden), _pow2(hidden) if proj else 0)
        return self.resident_bytes(hidden, proj, elem) + staged * elem


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return H200_SMS  # plan the CPU/compile-only configs for the target GPU


H200_SMS = 132


def _gpu_config(batch: int, hidden: int, proj: int, elem: int, sms: int) -> PersistentConfig:
    lo = 16 if proj else 4
    top = _pow2(hidden, lo)
    choice = None
    for block_b in (16, 32, 64, 128):
        hs = lo
        while hs < top and math.prod(PersistentConfig(block_b, hs, 4).grid(batch, hidden)) > sms:
            hs *= 2
        cfg = PersistentConfig(block_b, hs, 4)
        if math.prod(cfg.grid(batch, hidden)) > sms:
            break  # even all of H per program does not fit: the batch needs more SMs
        if cfg.smem_bytes(hidden, proj, elem) <= MAX_SMEM_BYTES:
            choice = cfg
            break
        if block_b >= batch:
            break
    if choice is None:  # serves the step design; the persistent one is refused
        choice = PersistentConfig(16, lo, 4)
    # More threads for wider resident tiles: fewer operand registers per thread. The step
    # design's cell kernel with a projection is the exception: it spills at 8 warps where
    # 4 do not (ptxas for sm_90, measured by resource_cases(); see the compile test).
    resident = choice.resident_bytes(hidden, proj, elem)
    num_warps = 8 if resident >= 16 * 1024 else 4
    cell_warps = 4 if proj else None
    return PersistentConfig(choice.block_b, choice.block_hs, num_warps, step_cell_warps=cell_warps)


def persistent_config(
    batch: int,
    hidden: int,
    proj: int,
    dtype: torch.dtype,
    device: torch.device,
    *,
    design: str = "persistent",
) -> PersistentConfig:
    """Deterministic tiles for a ``[batch]`` x ``hidden`` (x ``proj``) recurrence.

    Under the interpreter ``"persistent"`` gets one program (all of ``H`` and ``B``): the
    interpreter runs programs one after another, so a multi-program barrier would never
    complete. Otherwise: the smallest batch tile ``tl.dot`` accepts (16 rows, so the batch
    is spread over as many programs as possible), then the fewest hidden units per program
    (at least 4, so that the four interleaved gates give ``tl.dot`` 16 columns; 16 with a
    projection, whose backward dot has only the slice's units as columns) for which the grid
    fits one program per SM (132 when planning without a GPU); if that slice does not fit
    :data:`MAX_SMEM_BYTES`, the next wider batch tile (fewer tiles, so more SMs per tile and
    narrower slices). On a GPU both designs use the same tiles, so their saved tensors and
    results are the same computation.
    """
    device = torch.device(device)
    if design == "persistent" and device.type != "cuda":
        return PersistentConfig(block_b=_pow2(batch), block_hs=_pow2(hidden), num_warps=4)
    elem = torch.empty((), dtype=dtype).element_size()
    return _gpu_config(batch, hidden, proj, elem, _sm_count(device))


@triton.jit
def _positions(b_len, m_b, s, REVERSE: tl.constexpr):
    """Rows valid at step ``s`` and the sequence position each row works on."""
    m_valid = m_b & (s < b_len)  # [BB]
    if REVERSE:  # noqa: SIM108 (a constexpr branch, not a runtime select)
        o_t = tl.where(m_valid, b_len - 1 - s, s)
    else:
        o_t = tl.zeros_like(b_len) + s
    return m_valid, o_t


@triton.jit
def _batch_tile(lengths, i_b, B, T, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows of batch tile ``i_b`` (int32: see the module docstring), their mask and lengths."""
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    m_b = o_b < B
    return o_b, m_b, _tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)


@triton.jit
def _unit_cols(i_h, m_b, H, BLOCK_HS: tl.constexpr):
    """Hidden units of slice ``i_h`` and the [rows, units] mask of the tile."""
    o_u = i_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    return o_u, m_b[:, None] & (o_u < H)[None, :]


@triton.jit
def _gate_cols(i_h, H, BLOCK_HS: tl.constexpr):
    """Row of W_hh (= column of xp, gates, d_xp) of each interleaved column ``4*u + g``."""
    o_j = tl.arange(0, 4 * BLOCK_HS)  # [4BHS]
    o_u = i_h * BLOCK_HS + o_j // 4
    return (o_j % 4) * H + o_u, o_u < H, o_j % 4


@triton.jit
def _split_gates(x, BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr):
    """[BB, 4BHS] interleaved (4*u + g) -> four [BB, BHS] tiles i, f, g, o."""
    x = tl.reshape(x, [BLOCK_B, BLOCK_HS, 2, 2])  # (u, g // 2, g % 2)
    x_ig, x_fo = tl.split(x)  # g % 2 == 0: (i, g); g % 2 == 1: (f, o)
    b_i, b_g = tl.split(x_ig)
    b_f, b_o = tl.split(x_fo)
    return b_i, b_f, b_g, b_o


@triton.jit
def _join_gates(b_i, b_f, b_g, b_o, BLOCK_B: tl.constexpr, BLOCK_HS: tl.constexpr):
    """Inverse of :func:`_split_gates`."""
    x = tl.join(tl.join(b_i, b_g), tl.join(b_f, b_o))  # [BB, BHS, 2, 2]
    return tl.reshape(x, [BLOCK_B, 4 * BLOCK_HS])


@triton.jit
def _load_w_hh_t(w_hh, i_h, H, P: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_P: tl.constexpr):
    """The slice's W_hh^T, gates interleaved: [BLOCK_P, 4*BLOCK_HS], resident for the loop."""
    o_col, m_col, _ = _gate_cols(i_h, H, BLOCK_HS)
    o_p = tl.arange(0, BLOCK_P)
    return tl.load(
        w_hh + o_col[None, :] * P + o_p[:, None],
        mask=m_col[None, :] & (o_p < P)[:, None],
        other=0.0,
    )


@triton.jit
def _load_w_hr_t(w_hr, i_h, H: tl.constexpr, P, BLOCK_PS: tl.constexpr, BLOCK_HK: tl.constexpr):
    """W_hr^T columns of the program's projection slice: [BLOCK_HK, BLOCK_PS] (forward)."""
    o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
    o_k = tl.arange(0, BLOCK_HK)
    return tl.load(
        w_hr + o_ps[None, :] * H + o_k[:, None],
        mask=(o_ps < P)[None, :] & (o_k < H)[:, None],
        other=0.0,
    )


@triton.jit
def _load_w_hr_cols(w_hr, i_h, H: tl.constexpr, P, BLOCK_HS: tl.constexpr, BLOCK_P: tl.constexpr):
    """W_hr columns of the slice's hidden units: [BLOCK_P, BLOCK_HS] (backward dr)."""
    o_u = i_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    o_p = tl.arange(0, BLOCK_P)
    return tl.load(
        w_hr + o_p[:, None] * H + o_u[None, :],
        mask=(o_p < P)[:, None] & (o_u < H)[None, :],
        other=0.0,
    )


@triton.jit
def _grid_barrier(p_count, target, spin_limit, p_error, ok):
    """Wait until ``target`` arrivals on ``p_count``; False once a wait has timed out.

    One thread per program performs each scalar atomic; the CTA barriers order the other
    threads' stores before the release and their loads after the acquire.
    """
    tl.debug_barrier()
    tl.atomic_add(p_count, 1, sem="release", scope="gpu")
    cur = tl.atomic_add(p_count, 0, sem="acquire", scope="gpu")
    n = 0
    while (cur < target) & (n < spin_limit) & ok:
        cur = tl.atomic_add(p_count, 0, sem="acquire", scope="gpu")
        n += 1
    passed = cur >= target
    if not passed:
        tl.store(p_error, 1)
    tl.debug_barrier()
    return ok & passed


@triton.jit
def _fwd_cell(
    xp,
    gates,
    cs,
    out,
    p_h_cur,
    p_h_nxt,
    r_state,
    b_w,
    b_c,
    o_b,
    m_b,
    b_len,
    s,
    i_h,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One step of the slice's cell: gates, c, r (or h); returns the new c [BB, BHS] fp32."""
    m_valid, o_t = _positions(b_len, m_b, s, REVERSE)
    mv = m_valid[:, None]
    o_row = o_t * B + o_b  # [BB] row of the [T, B, *] tensors
    o_col, m_col, o_gate = _gate_cols(i_h, H, BLOCK_HS)
    m_bc = m_b[:, None] & m_col[None, :]
    o_p = tl.arange(0, BLOCK_P)
    # Written by every program of the tile before the barrier: bypass L1.
    b_h = tl.load(
        p_h_cur + o_b[:, None] * P + o_p[None, :],
        mask=m_b[:, None] & (o_p < P)[None, :],
        other=0.0,
        cache_modifier=".cg",
    )  # [BB, BP]
    o_x = o_row[:, None] * (4 * H) + o_col[None, :]  # [BB, 4BHS]
    acc = tl.load(xp + o_x, mask=m_bc, other=0.0).to(tl.float32)
    acc += tl.dot(b_h.to(b_w.dtype), b_w, input_precision=DOT_PRECISION)
    # sigmoid for i, f, o; tanh(x) = 2 sigmoid(2x) - 1 for g, as lstm.py's _tanh.
    k = tl.where(o_gate == 2, 2.0, 1.0)[None, :]
    b_act = k * _sigmoid(k * acc) - (k - 1.0)
    # Saved at the sequence position; zeros at padded positions keep backward finite.
    tl.store(gates + o_x, tl.where(mv, b_act, 0.0), mask=m_bc)
    b_i, b_f, b_g, b_o = _split_gates(b_act, BLOCK_B, BLOCK_HS)
    b_c_new = b_f * b_c + b_i * b_g
    b_r = b_o * _tanh(b_c_new)
    b_c = tl.where(mv, b_c_new, b_c)
    o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
    tl.store(cs + o_row[:, None] * H + o_u[None, :], tl.where(mv, b_c, 0.0), mask=m_bu)
    if HAS_PROJ:
        tl.store(
            r_state + o_b[:, None] * H + o_u[None, :], b_r.to(r_state.dtype.element_ty), mask=m_bu
        )
    else:
        o_h = o_b[:, None] * P + o_u[None, :]
        b_h_old = tl.load(p_h_cur + o_h, mask=m_bu, other=0.0)
        tl.store(p_h_nxt + o_h, tl.where(mv, b_r.to(b_h_old.dtype), b_h_old), mask=m_bu)
        tl.store(
            out + o_row[:, None] * P + o_u[None, :],
            tl.where(mv, b_r, 0.0).to(out.dtype.element_ty),
            mask=m_bu,
        )
    return b_c


@triton.jit
def _fwd_proj(
    out,
    p_h_cur,
    p_h_nxt,
    r_state,
    b_wr,
    o_b,
    m_b,
    b_len,
    s,
    i_h,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """h for the program's projection columns: r [BB, H] (all slices) @ W_hr^T slice."""
    m_valid, o_t = _positions(b_len, m_b, s, REVERSE)
    mv = m_valid[:, None]
    o_row = o_t * B + o_b
    o_k = tl.arange(0, BLOCK_HK)
    b_r = tl.load(
        r_state + o_b[:, None] * H + o_k[None, :],
        mask=m_b[:, None] & (o_k < H)[None, :],
        other=0.0,
        cache_modifier=".cg",
    )  # [BB, BHK]
    acc = tl.dot(b_r.to(b_wr.dtype), b_wr, input_precision=DOT_PRECISION)  # [BB, BPS]
    o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
    m_bp = m_b[:, None] & (o_ps < P)[None, :]
    o_h = o_b[:, None] * P + o_ps[None, :]
    b_h_old = tl.load(p_h_cur + o_h, mask=m_bp, other=0.0)
    tl.store(p_h_nxt + o_h, tl.where(mv, acc.to(b_h_old.dtype), b_h_old), mask=m_bp)
    tl.store(
        out + o_row[:, None] * P + o_ps[None, :],
        tl.where(mv, acc, 0.0).to(out.dtype.element_ty),
        mask=m_bp,
    )


@triton.jit
def _fwd_pad(
    gates,
    cs,
    out,
    o_b,
    m_b,
    s,
    i_h,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_PS: tl.constexpr,
):
    """Zeros at position ``s``, past the tile's longest sequence (persistent kernel only)."""
    o_row = s.to(tl.int64) * B + o_b  # [BB]
    o_col, m_col, _ = _gate_cols(i_h, H, BLOCK_HS)
    tl.store(
        gates + o_row[:, None] * (4 * H) + o_col[None, :],
        tl.zeros([BLOCK_B, 4 * BLOCK_HS], tl.float32),
        mask=m_b[:, None] & m_col[None, :],
    )
    o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
    tl.store(
        cs + o_row[:, None] * H + o_u[None, :], tl.zeros([BLOCK_B, BLOCK_HS], tl.float32), mask=m_bu
    )
    if HAS_PROJ:
        o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
        tl.store(
            out + o_row[:, None] * P + o_ps[None, :],
            tl.zeros([BLOCK_B, BLOCK_PS], out.dtype.element_ty),
            mask=m_b[:, None] & (o_ps < P)[None, :],
        )
    else:
        tl.store(
            out + o_row[:, None] * P + o_u[None, :],
            tl.zeros([BLOCK_B, BLOCK_HS], out.dtype.element_ty),
            mask=m_bu,
        )


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["T", "B", "spin_limit"])
def _persistent_fwd_kernel(
    xp,  # [T, B, 4H] input projection with biases (x dtype)
    w_hh,  # [4H, P] recurrent weight
    w_hr,  # [P, H] projection weight, or None
    c0,  # [B, H] initial cell state
    lengths,  # [B] int64 valid lengths, or None
    out,  # [T, B, P] output h per position, zero past each length
    h_n,  # [B, P]
    c_n,  # [B, H]
    gates,  # [T, B, 4H] fp32 activations i, f, g, o
    cs,  # [T, B, H] fp32 cell states
    h_state,  # [2, B, P] (weight dtype) h of the previous / current step; [0] holds h0
    r_state,  # [B, H] (weight dtype) o * tanh(c) before the projection, or None
    sync,  # [n_btiles + 1] int32 zeros: barrier counter per batch tile, then the error flag
    T,
    B,
    spin_limit,
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_h = tl.program_id(0)
    i_b = tl.program_id(1)
    n_slices = tl.num_programs(0)
    p_count = sync + i_b
    p_error = sync + tl.num_programs(1)
    o_b, m_b, b_len = _batch_tile(lengths, i_b, B, T, HAS_LENGTHS, BLOCK_B)  # [BB]
    n_steps = tl.max(b_len, 0)  # the same for every slice of the tile: same barrier count

    b_w = _load_w_hh_t(w_hh, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, 4BHS] resident
    if HAS_PROJ:
        b_wr = _load_w_hr_t(w_hr, i_h, H, P, BLOCK_PS, BLOCK_HK)  # [BHK, BPS] resident
    o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
    b_c = tl.load(c0 + o_b[:, None] * H + o_u[None, :], mask=m_bu, other=0.0).to(tl.float32)

    ok = n_steps >= 0  # True; False once a barrier has timed out
    n_bar = 0
    for s in range(0, n_steps):
        p_h_cur = h_state + (s % 2) * B * P
        p_h_nxt = h_state + ((s + 1) % 2) * B * P
        b_c = _fwd_cell(
            xp, gates, cs, out, p_h_cur, p_h_nxt, r_state, b_w, b_c, o_b, m_b, b_len, s, i_h, B,
            H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_P, DOT_PRECISION,
        )  # fmt: skip
        if HAS_PROJ:
            n_bar += 1
            ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)
            _fwd_proj(
                out, p_h_cur, p_h_nxt, r_state, b_wr, o_b, m_b, b_len, s, i_h, B,
                H, P, REVERSE, BLOCK_PS, BLOCK_HK, DOT_PRECISION,
            )  # fmt: skip
        n_bar += 1
        ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)

    # Finished rows kept their state: the buffers hold each row's last valid step.
    tl.store(c_n + o_b[:, None] * H + o_u[None, :], b_c.to(c_n.dtype.element_ty), mask=m_bu)
    p_h_fin = h_state + (n_steps % 2) * B * P
    if HAS_PROJ:
        o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
        m_bp = m_b[:, None] & (o_ps < P)[None, :]
        o_h = o_b[:, None] * P + o_ps[None, :]
        b_h = tl.load(p_h_fin + o_h, mask=m_bp, other=0.0, cache_modifier=".cg")
        tl.store(h_n + o_h, b_h.to(h_n.dtype.element_ty), mask=m_bp)
    else:
        o_h = o_b[:, None] * P + o_u[None, :]
        b_h = tl.load(p_h_fin + o_h, mask=m_bu, other=0.0)
        tl.store(h_n + o_h, b_h.to(h_n.dtype.element_ty), mask=m_bu)
    for s in range(n_steps, T):
        _fwd_pad(gates, cs, out, o_b, m_b, s, i_h, B, H, P, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_PS)


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["s", "T", "B"])
def _step_fwd_kernel(
    xp,  # [T, B, 4H]
    w_hh,  # [4H, P]
    w_hr,  # [P, H] or None
    lengths,  # [B] int64 or None
    out,  # [T, B, P]
    gates,  # [T, B, 4H] fp32
    cs,  # [T, B, H] fp32
    h_state,  # [2, B, P] (weight dtype)
    c_state,  # [B, H] fp32 c, read and written by the slice that owns it
    r_state,  # [B, H] (weight dtype) or None
    s,  # the step this launch runs (every row valid or not: padded rows write zeros)
    T,
    B,
    PHASE: tl.constexpr,  # 0: the cell; 1: the projection (after every program's phase 0)
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_HK: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_h = tl.program_id(0)
    i_b = tl.program_id(1)
    o_b, m_b, b_len = _batch_tile(lengths, i_b, B, T, HAS_LENGTHS, BLOCK_B)  # [BB]
    p_h_cur = h_state + (s % 2) * B * P
    p_h_nxt = h_state + ((s + 1) % 2) * B * P
    if PHASE == 0:
        b_w = _load_w_hh_t(w_hh, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, 4BHS]
        o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
        p_c = c_state + o_b[:, None] * H + o_u[None, :]
        b_c = tl.load(p_c, mask=m_bu, other=0.0)
        b_c = _fwd_cell(
            xp, gates, cs, out, p_h_cur, p_h_nxt, r_state, b_w, b_c, o_b, m_b, b_len, s, i_h, B,
            H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_P, DOT_PRECISION,
        )  # fmt: skip
        tl.store(p_c, b_c, mask=m_bu)
    else:
        b_wr = _load_w_hr_t(w_hr, i_h, H, P, BLOCK_PS, BLOCK_HK)  # [BHK, BPS]
        _fwd_proj(
            out, p_h_cur, p_h_nxt, r_state, b_wr, o_b, m_b, b_len, s, i_h, B,
            H, P, REVERSE, BLOCK_PS, BLOCK_HK, DOT_PRECISION,
        )  # fmt: skip


@triton.jit
def _bwd_dh_sum(
    p_part,
    d_hn,
    o_b,
    m_b,
    b_len,
    s,
    o_c,
    m_c,
    n_slices,
    B,
    P: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_NS: tl.constexpr,
):
    """Recurrent gradient reaching h at step ``s`` for columns ``o_c`` [BB, BC] fp32.

    The partials of all slices summed in slice order, BLOCK_NS at a time (deterministic);
    ``d_hn`` at a row's first step, whose partials were never written.
    """
    m = m_b[:, None] & m_c[None, :]  # [BB, BC]
    o_2d = o_b[:, None] * P + o_c[None, :]
    acc = tl.zeros([BLOCK_B, BLOCK_C], tl.float32)
    for j0 in range(0, n_slices, BLOCK_NS):
        o_j = j0 + tl.arange(0, BLOCK_NS)  # [BNS]
        b_part = tl.load(
            p_part + o_j[:, None, None] * B * P + o_2d[None, :, :],
            mask=(o_j < n_slices)[:, None, None] & m[None, :, :],
            other=0.0,
            cache_modifier=".cg",
        )  # [BNS, BB, BC]
        acc += tl.sum(b_part, axis=0)
    b_dhn = tl.load(d_hn + o_2d, mask=m, other=0.0).to(tl.float32)
    return tl.where((s == b_len - 1)[:, None], b_dhn, acc)


@triton.jit
def _bwd_dh_total(
    d_out,
    d_hn,
    d_hs,
    dh_tot,
    p_part,
    o_b,
    m_b,
    b_len,
    s,
    i_h,
    n_slices,
    B,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    BLOCK_NS: tl.constexpr,
):
    """With a projection: dh_t (recurrent + d_out) for the program's P slice -> dh_tot, d_hs."""
    m_valid, o_t = _positions(b_len, m_b, s, REVERSE)
    mv = m_valid[:, None]
    o_row = o_t * B + o_b
    o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
    m_ps = o_ps < P
    m_bp = m_b[:, None] & m_ps[None, :]
    b_dh = _bwd_dh_sum(
        p_part, d_hn, o_b, m_b, b_len, s, o_ps, m_ps, n_slices, B, P, BLOCK_B, BLOCK_PS, BLOCK_NS
    )
    b_dh += tl.load(d_out + o_row[:, None] * P + o_ps[None, :], mask=m_bp & mv, other=0.0).to(
        tl.float32
    )
    tl.store(dh_tot + o_b[:, None] * P + o_ps[None, :], b_dh, mask=m_bp)
    tl.store(d_hs + o_row[:, None] * P + o_ps[None, :], tl.where(mv, b_dh, 0.0), mask=m_bp)


@triton.jit
def _bwd_cell(
    d_out,
    d_hn,
    c0,
    gates,
    cs,
    d_xp,
    dh_tot,
    p_part_in,
    p_part_out,
    b_w,
    b_wr,
    b_dc,
    o_b,
    m_b,
    b_len,
    s,
    i_h,
    n_slices,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_NS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """One backward step of the slice: da -> d_xp, partial da W_hh -> p_part_out; new dc."""
    m_valid, o_t = _positions(b_len, m_b, s, REVERSE)
    mv = m_valid[:, None]
    if REVERSE:  # noqa: SIM108
        o_prev = o_t + 1  # the position processed one step earlier
    else:
        o_prev = o_t - 1
    o_row = o_t * B + o_b  # [BB]
    o_u = i_h * BLOCK_HS + tl.arange(0, BLOCK_HS)  # [BHS]
    m_u = o_u < H
    m_bu = m_b[:, None] & m_u[None, :]
    if HAS_PROJ:
        o_p = tl.arange(0, BLOCK_P)
        b_dh = tl.load(
            dh_tot + o_b[:, None] * P + o_p[None, :],
            mask=m_b[:, None] & (o_p < P)[None, :],
            other=0.0,
            cache_modifier=".cg",
        )  # [BB, BP] all P columns, from every program's phase
        b_dr = tl.dot(b_dh.to(b_wr.dtype), b_wr, input_precision=DOT_PRECISION)  # [BB, BHS]
    else:
        b_dr = _bwd_dh_sum(
            p_part_in, d_hn, o_b, m_b, b_len, s, o_u, m_u, n_slices, B, P, BLOCK_B, BLOCK_HS,
            BLOCK_NS,
        )  # fmt: skip
        b_dr += tl.load(d_out + o_row[:, None] * P + o_u[None, :], mask=m_bu & mv, other=0.0).to(
            tl.float32
        )
    o_col, m_col, _ = _gate_cols(i_h, H, BLOCK_HS)
    m_bc = m_b[:, None] & m_col[None, :]
    o_x = o_row[:, None] * (4 * H) + o_col[None, :]  # [BB, 4BHS]
    b_act = tl.load(gates + o_x, mask=m_bc & mv, other=0.0)
    b_i, b_f, b_g, b_o = _split_gates(b_act, BLOCK_B, BLOCK_HS)
    b_c = tl.load(cs + o_row[:, None] * H + o_u[None, :], mask=m_bu & mv, other=0.0)
    s_vec = tl.zeros_like(b_len) + s
    m_has_prev = (m_valid & (s_vec > 0))[:, None]  # c_{t-1} is a saved state, else c0
    b_c_prev = tl.load(
        cs + (o_prev * B + o_b)[:, None] * H + o_u[None, :], mask=m_bu & m_has_prev, other=0.0
    )
    m_first = (m_valid & (s_vec == 0))[:, None]
    b_c0 = tl.load(c0 + o_b[:, None] * H + o_u[None, :], mask=m_bu & m_first, other=0.0)
    b_c_prev = tl.where(m_first, b_c0.to(tl.float32), b_c_prev)
    b_tc = _tanh(b_c)
    b_dc_t = b_dc + b_dr * b_o * (1.0 - b_tc * b_tc)
    da_i = tl.where(mv, b_dc_t * b_g * b_i * (1.0 - b_i), 0.0)
    da_f = tl.where(mv, b_dc_t * b_c_prev * b_f * (1.0 - b_f), 0.0)
    da_g = tl.where(mv, b_dc_t * b_i * (1.0 - b_g * b_g), 0.0)
    da_o = tl.where(mv, b_dr * b_tc * b_o * (1.0 - b_o), 0.0)
    b_da = _join_gates(da_i, da_f, da_g, da_o, BLOCK_B, BLOCK_HS)  # [BB, 4BHS]
    tl.store(d_xp + o_x, b_da, mask=m_bc)
    # dh_{t-1} partial of this slice: da_slice [BB, 4BHS] @ W_hh rows of the slice [4BHS, P].
    b_part = tl.dot(b_da.to(b_w.dtype), tl.trans(b_w), input_precision=DOT_PRECISION)
    o_p = tl.arange(0, BLOCK_P)
    tl.store(
        p_part_out + i_h * B * P + o_b[:, None] * P + o_p[None, :],
        b_part,
        mask=m_b[:, None] & (o_p < P)[None, :],
    )
    return tl.where(mv, b_dc_t * b_f, b_dc)


@triton.jit
def _bwd_pad(
    d_xp,
    d_hs,
    o_b,
    m_b,
    s,
    i_h,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_PS: tl.constexpr,
):
    """Zeros at position ``s``, past the tile's longest sequence (persistent kernel only)."""
    o_row = s.to(tl.int64) * B + o_b
    o_col, m_col, _ = _gate_cols(i_h, H, BLOCK_HS)
    tl.store(
        d_xp + o_row[:, None] * (4 * H) + o_col[None, :],
        tl.zeros([BLOCK_B, 4 * BLOCK_HS], tl.float32),
        mask=m_b[:, None] & m_col[None, :],
    )
    if HAS_PROJ:
        o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
        tl.store(
            d_hs + o_row[:, None] * P + o_ps[None, :],
            tl.zeros([BLOCK_B, BLOCK_PS], tl.float32),
            mask=m_b[:, None] & (o_ps < P)[None, :],
        )


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["T", "B", "spin_limit"])
def _persistent_bwd_kernel(
    d_out,  # [T, B, P] gradient w.r.t. out
    d_hn,  # [B, P]
    d_cn,  # [B, H]
    w_hh,  # [4H, P]
    w_hr,  # [P, H] or None
    c0,  # [B, H]
    gates,  # [T, B, 4H] fp32 saved activations
    cs,  # [T, B, H] fp32 saved cell states
    lengths,  # [B] int64 or None
    d_xp,  # [T, B, 4H] fp32
    d_c0,  # [B, H] fp32
    d_hs,  # [T, B, P] fp32 total gradient reaching each projected h, or None
    dh_part,  # [2, n_slices, B, P] fp32 per-slice partials of da W_hh (double-buffered)
    dh_tot,  # [B, P] fp32 dh of the step with a projection, or None
    sync,  # [n_btiles + 1] int32 zeros: barrier counters, then the error flag
    T,
    B,
    spin_limit,
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    BLOCK_NS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_h = tl.program_id(0)
    i_b = tl.program_id(1)
    n_slices = tl.num_programs(0)
    p_count = sync + i_b
    p_error = sync + tl.num_programs(1)
    o_b, m_b, b_len = _batch_tile(lengths, i_b, B, T, HAS_LENGTHS, BLOCK_B)  # [BB]
    n_steps = tl.max(b_len, 0)

    b_w = _load_w_hh_t(w_hh, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, 4BHS] resident
    if HAS_PROJ:  # noqa: SIM108 (a constexpr branch)
        b_wr = _load_w_hr_cols(w_hr, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, BHS] resident
    else:
        b_wr = b_w
    o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
    b_dc = tl.load(d_cn + o_b[:, None] * H + o_u[None, :], mask=m_bu, other=0.0).to(tl.float32)

    ok = n_steps >= 0
    n_bar = 0
    slice_stride = n_slices * B * P
    for i in range(0, n_steps):
        s = n_steps - 1 - i
        # Parity by s, so that step s = 0 (every row valid) always writes dh_part[0], which
        # the launcher sums into d_h0.
        p_part_in = dh_part + ((s + 1) % 2) * slice_stride  # written by the previous step
        p_part_out = dh_part + (s % 2) * slice_stride
        if HAS_PROJ:
            _bwd_dh_total(
                d_out, d_hn, d_hs, dh_tot, p_part_in, o_b, m_b, b_len, s, i_h, n_slices, B,
                P, REVERSE, BLOCK_B, BLOCK_PS, BLOCK_NS,
            )  # fmt: skip
            n_bar += 1
            ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)
        b_dc = _bwd_cell(
            d_out, d_hn, c0, gates, cs, d_xp, dh_tot, p_part_in, p_part_out, b_w, b_wr, b_dc,
            o_b, m_b, b_len, s, i_h, n_slices, B, H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS,
            BLOCK_P, BLOCK_NS, DOT_PRECISION,
        )  # fmt: skip
        n_bar += 1
        ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)

    tl.store(d_c0 + o_b[:, None] * H + o_u[None, :], b_dc, mask=m_bu)
    for s in range(n_steps, T):
        _bwd_pad(d_xp, d_hs, o_b, m_b, s, i_h, B, H, P, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_PS)


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["i", "T", "B"])
def _step_bwd_kernel(
    d_out,  # [T, B, P]
    d_hn,  # [B, P]
    w_hh,  # [4H, P]
    w_hr,  # [P, H] or None
    c0,  # [B, H]
    gates,  # [T, B, 4H] fp32
    cs,  # [T, B, H] fp32
    lengths,  # [B] int64 or None
    d_xp,  # [T, B, 4H] fp32
    d_hs,  # [T, B, P] fp32 or None
    dh_part,  # [2, n_slices, B, P] fp32
    dh_tot,  # [B, P] fp32 or None
    dc_state,  # [B, H] fp32 gradient reaching c, holds d_cn at the start
    i,  # the i-th step of backward: s = T - 1 - i
    T,
    B,
    PHASE: tl.constexpr,  # 0: dh_t of the P slice (projection only); 1: the cell
    H: tl.constexpr,
    P: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_HS: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_PS: tl.constexpr,
    BLOCK_NS: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_h = tl.program_id(0)
    i_b = tl.program_id(1)
    n_slices = tl.num_programs(0)
    o_b, m_b, b_len = _batch_tile(lengths, i_b, B, T, HAS_LENGTHS, BLOCK_B)  # [BB]
    s = T - 1 - i
    slice_stride = n_slices * B * P
    p_part_in = dh_part + ((s + 1) % 2) * slice_stride
    p_part_out = dh_part + (s % 2) * slice_stride
    if PHASE == 0:
        _bwd_dh_total(
            d_out, d_hn, d_hs, dh_tot, p_part_in, o_b, m_b, b_len, s, i_h, n_slices, B,
            P, REVERSE, BLOCK_B, BLOCK_PS, BLOCK_NS,
        )  # fmt: skip
    else:
        b_w = _load_w_hh_t(w_hh, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, 4BHS]
        if HAS_PROJ:  # noqa: SIM108 (a constexpr branch)
            b_wr = _load_w_hr_cols(w_hr, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, BHS]
        else:
            b_wr = b_w
        o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
        p_dc = dc_state + o_b[:, None] * H + o_u[None, :]
        b_dc = tl.load(p_dc, mask=m_bu, other=0.0)
        b_dc = _bwd_cell(
            d_out, d_hn, c0, gates, cs, d_xp, dh_tot, p_part_in, p_part_out, b_w, b_wr, b_dc,
            o_b, m_b, b_len, s, i_h, n_slices, B, H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS,
            BLOCK_P, BLOCK_NS, DOT_PRECISION,
        )  # fmt: skip
        tl.store(p_dc, b_dc, mask=m_bu)


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every data buffer the launchers hand to a kernel; tests swap in a NaN-filled version."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _sync_buffer(n: int, device: torch.device) -> Tensor:
    """Zeroed int32 barrier counters (one per batch tile) followed by the error flag."""
    return torch.zeros(n, dtype=torch.int32, device=device)


def _check_barrier(sync: Tensor, what: str) -> None:
    # Reading the flag waits for the kernel: the price of never returning garbage silently.
    if int(sync[-1].item()) != 0:
        raise RuntimeError(
            f"persistent LSTM kernel: grid barrier timed out in the {what} pass after "
            f"{SPIN_LIMIT} polls (programs not co-resident?); "
            "use FASTLSTM_TRITON_DESIGN=step"
        )


def persistent_unsupported_reason(
    design: str, device: torch.device, dtype: torch.dtype, batch: int, hidden: int, proj: int
) -> str | None:
    """None when ``design`` ("persistent" or "step") can serve this call, else the reason."""
    if design not in DESIGNS:
        return f"unknown design {design!r} (expected one of {', '.join(DESIGNS)})"
    device = torch.device(device)
    reason = unsupported_reason(device, dtype, hidden, proj)
    if reason is not None:
        return reason
    cfg = persistent_config(batch, hidden, proj, dtype, device, design=design)
    if 2 * cfg.n_slices(hidden) * batch * max(4 * hidden, proj) >= 2**31:
        return f"batch {batch} x hidden {hidden} state buffers exceed int32 offsets"
    if device.type != "cuda":
        return None  # the interpreter: one program ("persistent") or any grid ("step")
    elem = torch.empty((), dtype=dtype).element_size()
    return _config_reason(
        design, cfg, batch, hidden, proj, elem, dot_precision(dtype), _sm_count(device)
    )


def _config_reason(
    design: str,
    cfg: PersistentConfig,
    batch: int,
    hidden: int,
    proj: int,
    elem: int,
    precision: str,
    sms: int,
) -> str | None:
    smem = cfg.smem_bytes(hidden, proj, elem)
    if smem > MAX_SMEM_BYTES:
        return (
            f"the {design} design's resident weight slice and h tile ({smem // 1024} KiB of "
            f"shared memory per program at {cfg.block_hs} hidden units x {cfg.block_b} rows) "
            f"exceed {MAX_SMEM_BYTES // 1024} KiB (hidden {hidden}, proj_size {proj})"
        )
    if precision == "ieee" and (cfg.block_hs > 8 or _pow2(proj or hidden) > 256):
        # Exact fp32 tl.dot runs on the FMA units, whose operands live in registers: a
        # slice wider than 8 units or 256 inputs spills (measured for sm_90, see
        # resource_cases()), while TF32/half dots keep it in shared memory.
        return (
            f"exact fp32 dots (TF32 disabled) cannot keep a {cfg.block_hs}-unit x "
            f"{proj or hidden}-input W_hh slice resident without spilling"
        )
    if design == "persistent":
        n_h, n_b = cfg.grid(batch, hidden)
        if n_h * n_b > sms:
            return (
                f"the persistent design needs {n_h} x {n_b} co-resident programs for batch "
                f"{batch}, hidden {hidden}; this GPU has {sms} SMs (one program per SM)"
            )
    return None


def _check_design(design: str, device: torch.device, dtype, batch, hidden, proj) -> None:
    reason = persistent_unsupported_reason(design, device, dtype, batch, hidden, proj)
    if reason is not None:
        raise RuntimeError(f"the {design} LSTM kernels cannot run this call: {reason}")


def _blocks(cfg: PersistentConfig, hidden: int, proj: int, P: int) -> dict[str, int]:
    return {
        "BLOCK_B": cfg.block_b,
        "BLOCK_HS": cfg.block_hs,
        "BLOCK_P": _pow2(P),
        "BLOCK_PS": cfg.block_ps(hidden, proj),
    }


def persistent_forward(
    xp: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    *,
    design: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The recurrence over a precomputed input projection with the weight-stationary kernels.

    Same contract as ``kernels.lstm.lstm_recurrence_forward`` (and the reference's
    ``recurrence_forward``); ``design`` is ``"persistent"`` (one cooperative launch) or
    ``"step"`` (one launch per step, two with a projection).

    Raises:
        RuntimeError: the design cannot serve the call, or a grid barrier timed out.
    """
    T, B, G = xp.shape
    H, P = G // 4, w_hh.shape[1]
    proj = 0 if w_hr is None else P
    dev, f32 = xp.device, torch.float32
    _check_design(design, dev, w_hh.dtype, B, H, proj)
    cfg = persistent_config(B, H, proj, w_hh.dtype, dev, design=design)
    out = _empty(T, B, P, dtype=xp.dtype, device=dev)
    gates = _empty(T, B, G, dtype=f32, device=dev)
    cs = _empty(T, B, H, dtype=f32, device=dev)
    h_state = _empty(2, B, P, dtype=w_hh.dtype, device=dev)
    h_state[0].copy_(h0)
    r_state = _empty(B, H, dtype=w_hh.dtype, device=dev) if proj else None
    w_hh = w_hh.contiguous()
    w_hr = None if w_hr is None else w_hr.to(w_hh.dtype).contiguous()
    lengths = None if lengths is None else lengths.contiguous()
    grid = cfg.grid(B, H)
    opts = {"device": dev, "num_stages": cfg.num_stages}
    common = dict(
        xp=xp.contiguous(),
        w_hh=w_hh,
        w_hr=w_hr,
        lengths=lengths,
        out=out,
        gates=gates,
        cs=cs,
        h_state=h_state,
        r_state=r_state,
        T=T,
        B=B,
        H=H,
        P=P,
        REVERSE=bool(reverse),
        BLOCK_HK=_pow2(H),
        DOT_PRECISION=dot_precision(w_hh.dtype),
        **_blocks(cfg, H, proj, P),
    )
    if design == "persistent":
        h_n = _empty(B, P, dtype=h0.dtype, device=dev)
        c_n = _empty(B, H, dtype=c0.dtype, device=dev)
        sync = _sync_buffer(grid[1] + 1, dev)
        launch(
            _persistent_fwd_kernel,
            grid,
            num_warps=cfg.warps("persistent_fwd"),
            cooperative=dev.type == "cuda",
            c0=c0.contiguous(),
            h_n=h_n,
            c_n=c_n,
            sync=sync,
            spin_limit=SPIN_LIMIT,
            **common,
            **opts,
        )
        _check_barrier(sync, "forward")
        return out, h_n, c_n, gates, cs
    c_state = _empty(B, H, dtype=f32, device=dev)
    c_state.copy_(c0)
    cell = {"c_state": c_state, "PHASE": 0, "num_warps": cfg.warps("step_fwd_p0")}
    proj_phase = {"c_state": c_state, "PHASE": 1, "num_warps": cfg.warps("step_fwd_p1")}
    for s in range(T):
        launch(_step_fwd_kernel, grid, s=s, **cell, **common, **opts)
        if proj:
            launch(_step_fwd_kernel, grid, s=s, **proj_phase, **common, **opts)
    # Rows past their length kept their state: the buffers hold each row's last valid step.
    return out, h_state[T % 2].to(h0.dtype), c_state.to(c0.dtype), gates, cs


def persistent_backward(
    d_out: Tensor,
    d_hn: Tensor,
    d_cn: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    c0: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    *,
    design: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backpropagation through time with the weight-stationary kernels.

    Same contract as ``kernels.lstm.lstm_recurrence_backward``: fp32 ``d_xp [T, B, 4H]``
    (zero past each length), ``d_h0 [B, P]``, ``d_c0 [B, H]`` and, with a projection,
    ``d_hs [T, B, P]``, else None. The saved ``gates``/``cs`` may come from either design.

    Raises:
        RuntimeError: the design cannot serve the call, or a grid barrier timed out.
    """
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    proj = 0 if w_hr is None else P
    dev, f32 = gates.device, torch.float32
    _check_design(design, dev, w_hh.dtype, B, H, proj)
    cfg = persistent_config(B, H, proj, w_hh.dtype, dev, design=design)
    grid = cfg.grid(B, H)
    d_xp = _empty(T, B, G, dtype=f32, device=dev)
    d_hs = _empty(T, B, P, dtype=f32, device=dev) if proj else None
    dh_tot = _empty(B, P, dtype=f32, device=dev) if proj else None
    dh_part = _empty(2, grid[0], B, P, dtype=f32, device=dev)
    w_hh = w_hh.contiguous()
    w_hr = None if w_hr is None else w_hr.to(w_hh.dtype).contiguous()
    lengths = None if lengths is None else lengths.contiguous()
    block_ns = cfg.block_ns(H, cfg.block_ps(H, proj) if proj else cfg.block_hs)
    opts = {"device": dev, "num_warps": cfg.warps("persistent_bwd"), "num_stages": cfg.num_stages}
    common = dict(
        d_out=d_out.contiguous(),
        d_hn=d_hn.contiguous(),
        w_hh=w_hh,
        w_hr=w_hr,
        c0=c0.contiguous(),
        gates=gates.contiguous(),
        cs=cs.contiguous(),
        lengths=lengths,
        d_xp=d_xp,
        d_hs=d_hs,
        dh_part=dh_part,
        dh_tot=dh_tot,
        T=T,
        B=B,
        H=H,
        P=P,
        REVERSE=bool(reverse),
        BLOCK_NS=block_ns,
        DOT_PRECISION=dot_precision(w_hh.dtype),
        **_blocks(cfg, H, proj, P),
    )
    if design == "persistent":
        d_c0 = _empty(B, H, dtype=f32, device=dev)
        sync = _sync_buffer(grid[1] + 1, dev)
        launch(
            _persistent_bwd_kernel,
            grid,
            cooperative=dev.type == "cuda",
            d_cn=d_cn.contiguous(),
            d_c0=d_c0,
            sync=sync,
            spin_limit=SPIN_LIMIT,
            **common,
            **opts,
        )
        _check_barrier(sync, "backward")
    else:
        d_c0 = _empty(B, H, dtype=f32, device=dev)
        d_c0.copy_(d_cn)  # the gradient reaching c, updated in place step by step
        for i in range(T):
            if proj:
                launch(_step_bwd_kernel, grid, dc_state=d_c0, i=i, PHASE=0, **common, **opts)
            launch(_step_bwd_kernel, grid, dc_state=d_c0, i=i, PHASE=1, **common, **opts)
    # d_h0 = da_0 W_hh: the partials of step s = 0 (every row is valid there, both designs
    # write them to dh_part[0]), summed over slices by one deterministic reduction.
    d_h0 = dh_part[0].sum(0)
    return d_xp, d_h0, d_c0, d_hs


_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Pointer arguments by the dtype they hold; everything else is an int32 scalar.
_X_DTYPE_ARGS = ("xp", "out", "h_n", "c_n", "c0", "d_out", "d_hn", "d_cn")
_W_DTYPE_ARGS = ("w_hh", "w_hr", "h_state", "r_state")
_F32_ARGS = ("gates", "cs", "c_state", "d_xp", "d_h0", "d_c0", "d_hs", "dh_part", "dh_tot")
_F32_ARGS += ("dc_state",)


def _build(name, kernel, dtype, constexprs, cfg, hidden, fields) -> KernelBuild:
    fn = kernel.fn  # unwrap @triton.heuristics: its outputs are given in constexprs
    t = _TRITON_DTYPES[dtype]
    signature = {}
    for arg in fn.arg_names:
        if arg in constexprs:
            continue
        if arg in _X_DTYPE_ARGS or arg in _W_DTYPE_ARGS:
            signature[arg] = "*" + t
        elif arg in _F32_ARGS:
            signature[arg] = "*fp32"
        elif arg == "lengths":
            signature[arg] = "*i64"
        elif arg == "sync":
            signature[arg] = "*i32"
        else:
            signature[arg] = "i32"
    return KernelBuild(
        name=name,
        kernel=fn,
        signature=signature,
        constexprs=constexprs,
        num_warps=cfg.warps(name),
        num_stages=cfg.num_stages,
        dtype=t,
        hidden=hidden,
        fields=fields,
    )


def resource_cases(
    hiddens: tuple[int, ...] = (64, 128, 256, 512, 1024),
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
    batch: int = 64,
    variants: tuple[tuple[bool, bool], ...] = ((False, False), (True, False), (True, True)),
    sms: int = H200_SMS,
) -> list[KernelBuild]:
    """Every kernel of both designs at the launch settings the config picks on an H200.

    Returns a list of ``kernels.launch.KernelBuild``; fp32 appears with both dot precisions.

    ``variants`` are ``(lengths, projection)`` pairs; the projection case uses
    ``proj_size = H // 2``. Settings the designs refuse (resident slice too large, grid
    larger than ``sms``) are left out, as the launchers would refuse them.
    """
    builds = []
    for hidden in hiddens:
        for dtype in dtypes:
            elem = torch.empty((), dtype=dtype).element_size()
            # fp32 runs TF32 or exact dots depending on the TF32 switch: both can be picked.
            precisions = ("tf32", "ieee") if dtype == torch.float32 else ("tf32",)
            for (has_lengths, has_proj), precision in itertools.product(variants, precisions):
                proj = hidden // 2 if has_proj else 0
                P = proj or hidden
                cfg = _gpu_config(batch, hidden, proj, elem, sms)
                if _config_reason("step", cfg, batch, hidden, proj, elem, precision, sms):
                    continue
                n_h, n_b = cfg.grid(batch, hidden)
                block_c = cfg.block_ps(hidden, proj) if proj else cfg.block_hs
                base = dict(
                    H=hidden,
                    P=P,
                    HAS_LENGTHS=has_lengths,
                    HAS_PROJ=has_proj,
                    REVERSE=False,
                    DOT_PRECISION=precision,
                    **_blocks(cfg, hidden, proj, P),
                )
                nones = {}
                if not has_lengths:
                    nones["lengths"] = None
                if not has_proj:
                    nones.update(w_hr=None, r_state=None, d_hs=None, dh_tot=None)
                fields = {
                    "precision": precision,
                    "B": batch,
                    "lengths": int(has_lengths),
                    "proj": proj,
                    "BLOCK_HS": cfg.block_hs,
                    "BLOCK_B": cfg.block_b,
                    "grid": f"{n_h}x{n_b}",
                }
                fwd = {**base, "BLOCK_HK": _pow2(hidden)}
                bwd = {**base, "BLOCK_NS": cfg.block_ns(hidden, block_c)}
                phases = (0, 1) if has_proj else (0,)
                kernels = []
                if not _config_reason("persistent", cfg, batch, hidden, proj, elem, precision, sms):
                    kernels.append(("persistent_fwd", _persistent_fwd_kernel, fwd))
                    kernels.append(("persistent_bwd", _persistent_bwd_kernel, bwd))
                for ph in phases:
                    kernels.append((f"step_fwd_p{ph}", _step_fwd_kernel, {**fwd, "PHASE": ph}))
                for ph in (0, 1) if has_proj else (1,):
                    kernels.append((f"step_bwd_p{ph}", _step_bwd_kernel, {**bwd, "PHASE": ph}))
                for name, kernel, cx in kernels:
                    cx = {**cx, **{k: v for k, v in nones.items() if k in kernel.fn.arg_names}}
                    builds.append(
                        _build(name, kernel, dtype, cx, cfg, hidden, {**fields, "design": name})
                    )
    return builds
