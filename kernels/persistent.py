"""Weight-stationary LSTM recurrence: the hidden units split across programs.

Two designs share one per-step body, written once as ``@triton.jit`` helpers: ``persistent``
(one cooperative launch runs the whole loop; the programs of a batch tile meet at a grid
barrier after every step, two with ``proj_size``) and ``step`` (one launch per step, two
with ``proj_size``: the kernel boundary is the barrier, so it needs no co-residency).
Program ``(i_h, i_b)`` owns ``BLOCK_HS`` hidden units with all four gates and ``BLOCK_B``
batch rows, and keeps its slice of ``W_hh`` on chip for the loop. The work split, the
barrier and the memory traffic are described in docs/kernels.md ("The weight-stationary
designs").

Offsets: rows of the ``[T, B, *]`` tensors are int64 (``position * B + row``); offsets inside
the per-step ``[B, *]`` state buffers are int32, which ``launch.plan_why_not`` guarantees fit.

Reads top to bottom: shared step helpers, forward kernels, backward kernels, launchers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import optional_inputs, positions, sigmoid, tanh, tile_lengths
from .launch import PersistentConfig, dot_precision, launch, pow2

__all__ = [
    "SPIN_LIMIT",
    "persistent_backward",
    "persistent_forward",
    "step_backward",
    "step_forward",
]

# Polls of the barrier counter before a program gives up (an L2 atomic round trip each, so
# on the order of seconds): far beyond any legitimate wait, short of a hang.
SPIN_LIMIT = 1 << 22


@triton.jit
def _batch_tile(lengths, i_b, B, T, HAS_LENGTHS: tl.constexpr, BLOCK_B: tl.constexpr):
    """Rows of batch tile ``i_b`` (int32: see the module docstring), their mask and lengths."""
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B)  # [BB]
    m_b = o_b < B
    return o_b, m_b, tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)


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
def _h_cols(m_b, i_h, P, HAS_PROJ: tl.constexpr, BLOCK_HS: tl.constexpr, BLOCK_PS: tl.constexpr):
    """The columns of h a program writes [BW] and their [BB, BW] mask: its hidden units, or
    with a projection its slice of the P columns."""
    if HAS_PROJ:
        o_c = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
    else:
        o_c = i_h * BLOCK_HS + tl.arange(0, BLOCK_HS)
    return o_c, m_b[:, None] & (o_c < P)[None, :]


@triton.jit
def _poison(p, o_rows, o_cols, m, N):
    """NaN at ``p[row, col]`` of a ``[*, N]`` tensor: results a program cannot vouch for."""
    o = o_rows[:, None] * N + o_cols[None, :]
    tl.store(p + o, tl.full(o.shape, float("nan"), p.dtype.element_ty), mask=m)


@triton.jit
def _grid_barrier(p_count, target, spin_limit, p_error, ok):
    """Wait until ``target`` arrivals on ``p_count``; ``ok`` (int32) becomes 0 once a wait
    has timed out, and later barriers then stop waiting.

    One thread per program performs each scalar atomic; the CTA barriers order the other
    threads' stores before the release and their loads after the acquire.
    """
    tl.debug_barrier()
    tl.atomic_add(p_count, 1, sem="release", scope="gpu")
    cur = tl.atomic_add(p_count, 0, sem="acquire", scope="gpu")
    n = 0
    while (cur < target) & (n < spin_limit) & (ok != 0):
        cur = tl.atomic_add(p_count, 0, sem="acquire", scope="gpu")
        n += 1
    passed = cur >= target
    if not passed:
        tl.store(p_error, 1)
    tl.debug_barrier()
    return ok * passed.to(tl.int32)


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
    b_h_own,
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
    """One step of the slice's cell: gates, c, r (or h).

    ``b_c`` [BB, BHS] fp32 and, without a projection, ``b_h_own`` [BB, BHS] (the slice's own
    units of ``h_{t-1}``, in the h buffer's dtype) are the state a program keeps in
    registers; returns both updated (``b_h_own`` unchanged with a projection).
    """
    m_valid, o_t = positions(b_len, m_b, s, REVERSE)
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
    b_act = k * sigmoid(k * acc) - (k - 1.0)
    # Saved at the sequence position; zeros at padded positions keep backward finite.
    tl.store(gates + o_x, tl.where(mv, b_act, 0.0), mask=m_bc)
    b_i, b_f, b_g, b_o = _split_gates(b_act, BLOCK_B, BLOCK_HS)
    b_c_new = b_f * b_c + b_i * b_g
    b_r = b_o * tanh(b_c_new)
    b_c = tl.where(mv, b_c_new, b_c)
    o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
    tl.store(cs + o_row[:, None] * H + o_u[None, :], tl.where(mv, b_c, 0.0), mask=m_bu)
    if HAS_PROJ:
        tl.store(
            r_state + o_b[:, None] * H + o_u[None, :], b_r.to(r_state.dtype.element_ty), mask=m_bu
        )
    else:
        b_h_own = tl.where(mv, b_r.to(b_h_own.dtype), b_h_own)
        tl.store(p_h_nxt + o_b[:, None] * P + o_u[None, :], b_h_own, mask=m_bu)
        tl.store(
            out + o_row[:, None] * P + o_u[None, :],
            tl.where(mv, b_r, 0.0).to(out.dtype.element_ty),
            mask=m_bu,
        )
    return b_c, b_h_own


@triton.jit
def _fwd_proj(
    out,
    p_h_nxt,
    r_state,
    b_wr,
    b_h_own,
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
    """h for the program's projection columns: r [BB, H] (all slices) @ W_hr^T slice.

    ``b_h_own`` [BB, BPS] holds those columns of ``h_{t-1}``; returns them updated."""
    m_valid, o_t = positions(b_len, m_b, s, REVERSE)
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
    b_h_own = tl.where(mv, acc.to(b_h_own.dtype), b_h_own)
    tl.store(p_h_nxt + o_b[:, None] * P + o_ps[None, :], b_h_own, mask=m_bp)
    tl.store(
        out + o_row[:, None] * P + o_ps[None, :],
        tl.where(mv, acc, 0.0).to(out.dtype.element_ty),
        mask=m_bp,
    )
    return b_h_own


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


@optional_inputs
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
    # The columns of h this program writes stay in registers like c, so a finished row keeps
    # its h without a reload from L2 (every load after a barrier's acquire misses L1).
    o_hw, m_hw = _h_cols(m_b, i_h, P, HAS_PROJ, BLOCK_HS, BLOCK_PS)  # [BW], [BB, BW]
    o_h = o_b[:, None] * P + o_hw[None, :]
    b_h = tl.load(h_state + o_h, mask=m_hw, other=0.0)  # [BB, BW]; h_state[0] holds h0

    ok = tl.full([], 1, tl.int32)  # 0 once a barrier has timed out
    n_bar = 0
    for s in range(0, n_steps):
        p_h_cur = h_state + (s % 2) * B * P
        p_h_nxt = h_state + ((s + 1) % 2) * B * P
        b_c, b_h = _fwd_cell(
            xp, gates, cs, out, p_h_cur, p_h_nxt, r_state, b_w, b_c, b_h, o_b, m_b, b_len, s, i_h,
            B, H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_P, DOT_PRECISION,
        )  # fmt: skip
        if HAS_PROJ:
            n_bar += 1
            ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)
            b_h = _fwd_proj(
                out, p_h_nxt, r_state, b_wr, b_h, o_b, m_b, b_len, s, i_h, B,
                H, P, REVERSE, BLOCK_PS, BLOCK_HK, DOT_PRECISION,
            )  # fmt: skip
        n_bar += 1
        ok = _grid_barrier(p_count, n_bar * n_slices, spin_limit, p_error, ok)

    # Finished rows kept their state: the registers hold each row's last valid step.
    tl.store(c_n + o_b[:, None] * H + o_u[None, :], b_c.to(c_n.dtype.element_ty), mask=m_bu)
    tl.store(h_n + o_h, b_h.to(h_n.dtype.element_ty), mask=m_hw)
    for s in range(n_steps, T):
        _fwd_pad(gates, cs, out, o_b, m_b, s, i_h, B, H, P, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_PS)
    # A program whose own waits all passed may have been let through by the arrivals of
    # programs that had given up: the flag they set before arriving is visible here.
    ok = ok * (tl.atomic_add(p_error, 0, sem="acquire", scope="gpu") == 0).to(tl.int32)
    if ok == 0:
        # A barrier timed out: the results are garbage, so they become NaN rather than
        # plausible; the host reads the flag later, without a sync (kernels/dispatch.py).
        # Its own loop variable: s is int64 after the padding loop above, and a compiled loop
        # may not change a variable's type.
        for t in range(0, T):
            _poison(out, t * B + o_b.to(tl.int64), o_hw, m_hw, P)
        _poison(h_n, o_b, o_hw, m_hw, P)
        _poison(c_n, o_b, o_u, m_bu, H)


@optional_inputs
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
    PROJ_PHASE: tl.constexpr,  # False: the cell; True: the projection, after every cell
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
    # A launch keeps nothing in registers across steps: the state comes from the buffers.
    o_hw, m_hw = _h_cols(m_b, i_h, P, HAS_PROJ, BLOCK_HS, BLOCK_PS)  # [BW], [BB, BW]
    b_h = tl.load(p_h_cur + o_b[:, None] * P + o_hw[None, :], mask=m_hw, other=0.0)
    if PROJ_PHASE:
        b_wr = _load_w_hr_t(w_hr, i_h, H, P, BLOCK_PS, BLOCK_HK)  # [BHK, BPS]
        _fwd_proj(
            out, p_h_nxt, r_state, b_wr, b_h, o_b, m_b, b_len, s, i_h, B,
            H, P, REVERSE, BLOCK_PS, BLOCK_HK, DOT_PRECISION,
        )  # fmt: skip
    else:
        b_w = _load_w_hh_t(w_hh, i_h, H, P, BLOCK_HS, BLOCK_P)  # [BP, 4BHS]
        o_u, m_bu = _unit_cols(i_h, m_b, H, BLOCK_HS)  # [BHS], [BB, BHS]
        p_c = c_state + o_b[:, None] * H + o_u[None, :]
        b_c = tl.load(p_c, mask=m_bu, other=0.0)
        b_c, b_h = _fwd_cell(
            xp, gates, cs, out, p_h_cur, p_h_nxt, r_state, b_w, b_c, b_h, o_b, m_b, b_len, s, i_h,
            B, H, P, REVERSE, HAS_PROJ, BLOCK_B, BLOCK_HS, BLOCK_P, DOT_PRECISION,
        )  # fmt: skip
        tl.store(p_c, b_c, mask=m_bu)


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
    m_valid, o_t = positions(b_len, m_b, s, REVERSE)
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
    m_valid, o_t = positions(b_len, m_b, s, REVERSE)
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
    b_tc = tanh(b_c)
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


@optional_inputs
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

    ok = tl.full([], 1, tl.int32)  # 0 once a barrier has timed out
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
    # A program whose own waits all passed may have been let through by the arrivals of
    # programs that had given up: the flag they set before arriving is visible here.
    ok = ok * (tl.atomic_add(p_error, 0, sem="acquire", scope="gpu") == 0).to(tl.int32)
    if ok == 0:
        # A barrier timed out: every gradient this program wrote becomes NaN (see forward).
        o_col, m_col, _ = _gate_cols(i_h, H, BLOCK_HS)
        o_p = tl.arange(0, BLOCK_P)
        o_ps = i_h * BLOCK_PS + tl.arange(0, BLOCK_PS)
        for t in range(0, T):  # not s: see the forward kernel
            o_row = t * B + o_b.to(tl.int64)
            _poison(d_xp, o_row, o_col, m_b[:, None] & m_col[None, :], 4 * H)
            if HAS_PROJ:
                _poison(d_hs, o_row, o_ps, m_b[:, None] & (o_ps < P)[None, :], P)
        _poison(d_c0, o_b, o_u, m_bu, H)
        _poison(dh_part, i_h * B + o_b, o_p, m_b[:, None] & (o_p < P)[None, :], P)


@optional_inputs
@triton.jit(do_not_specialize=["s", "T", "B"])
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
    s,  # the step this launch runs, T - 1 down to 0
    T,
    B,
    PROJ_PHASE: tl.constexpr,  # True: dh_t of the program's P slice, before every cell
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
    slice_stride = n_slices * B * P
    p_part_in = dh_part + ((s + 1) % 2) * slice_stride
    p_part_out = dh_part + (s % 2) * slice_stride
    if PROJ_PHASE:
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


def _barrier_counters(n_tiles: int, device: torch.device) -> Tensor:
    """One int32 barrier counter per batch tile, zeroed per launch, then the error flag."""
    return torch.zeros(n_tiles + 1, dtype=torch.int32, device=device)


def _blocks(cfg: PersistentConfig, hidden: int, proj: int) -> dict[str, int]:
    return {
        "BLOCK_B": cfg.block_b,
        "BLOCK_HS": cfg.block_hs,
        "BLOCK_P": pow2(proj or hidden),
        "BLOCK_PS": cfg.block_ps(hidden, proj),
    }


def _forward_args(a: common.ForwardArgs, cfg: PersistentConfig) -> tuple[dict, tuple]:
    """The arguments both forward designs share, and the outputs they allocate."""
    xp, w_hh, w_hr, h0, _, lengths, reverse = a
    T, B, G = xp.shape
    H, P = G // 4, w_hh.shape[1]
    proj = 0 if w_hr is None else P
    dev, f32 = xp.device, torch.float32
    out = common.empty(T, B, P, dtype=xp.dtype, device=dev)
    gates = common.empty(T, B, G, dtype=f32, device=dev)
    cs = common.empty(T, B, H, dtype=f32, device=dev)
    # h is exchanged in the weight dtype: every tl.dot casts it to that dtype anyway, and the
    # bytes each program reads per step halve in bf16/fp16.
    h_state = common.empty(2, B, P, dtype=w_hh.dtype, device=dev)
    h_state[0].copy_(h0)
    args = dict(
        xp=xp.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=None if w_hr is None else w_hr.to(w_hh.dtype).contiguous(),
        lengths=lengths,
        out=out,
        gates=gates,
        cs=cs,
        h_state=h_state,
        r_state=common.empty(B, H, dtype=w_hh.dtype, device=dev) if proj else None,
        T=T,
        B=B,
        H=H,
        P=P,
        REVERSE=bool(reverse),
        BLOCK_HK=pow2(H),
        DOT_PRECISION=dot_precision(w_hh.dtype),
        num_stages=cfg.num_stages,
        **_blocks(cfg, H, proj),
    )
    return args, (out, gates, cs)


def persistent_forward(
    a: common.ForwardArgs, cfg: PersistentConfig, *, cooperative: bool
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]:
    """The forward loop in one launch; the contract of ``fastlstm.kernels.recurrence_forward``.

    Returns the five results and the barrier's int32 error flag (one element on the device,
    1 when a barrier timed out; the results are then NaN). ``cooperative`` asks the driver to
    make every program resident at once (always on a GPU; the interpreter ignores it).
    """
    _, B, G = a.xp.shape
    H, P = G // 4, a.w_hh.shape[1]
    args, (out, gates, cs) = _forward_args(a, cfg)
    h_n = common.empty(B, P, dtype=a.h0.dtype, device=a.xp.device)
    c_n = common.empty(B, H, dtype=a.c0.dtype, device=a.xp.device)
    grid = cfg.grid(B, H)
    sync = _barrier_counters(grid[1], a.xp.device)
    launch(
        _persistent_fwd_kernel,
        grid,
        num_warps=cfg.warps("persistent_fwd"),
        maxnreg=cfg.maxnreg,
        cooperative=cooperative,
        c0=a.c0.contiguous(),
        h_n=h_n,
        c_n=c_n,
        sync=sync,
        spin_limit=SPIN_LIMIT,
        **args,
    )
    return (out, h_n, c_n, gates, cs), sync[-1:]


def step_forward(
    a: common.ForwardArgs, cfg: PersistentConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward loop, one launch per step (two with a projection)."""
    T, B, G = a.xp.shape
    H = G // 4
    args, (out, gates, cs) = _forward_args(a, cfg)
    c_state = common.empty(B, H, dtype=torch.float32, device=a.xp.device)
    c_state.copy_(a.c0)
    grid = cfg.grid(B, H)
    for s in range(T):
        launch(
            _step_fwd_kernel, grid, s=s, c_state=c_state, PROJ_PHASE=False,
            num_warps=cfg.warps("step_fwd_cell"), maxnreg=cfg.maxnreg, **args,
        )  # fmt: skip
        if a.w_hr is not None:
            launch(
                _step_fwd_kernel, grid, s=s, c_state=c_state, PROJ_PHASE=True,
                num_warps=cfg.warps("step_fwd_proj"), maxnreg=cfg.maxnreg, **args,
            )  # fmt: skip
    # Rows past their length kept their state: the buffers hold each row's last valid step.
    h_state = args["h_state"]
    return out, h_state[T % 2].to(a.h0.dtype), c_state.to(a.c0.dtype), gates, cs


def _backward_args(a: common.BackwardArgs, cfg: PersistentConfig) -> dict:
    """The arguments both backward designs share, with the buffers they allocate."""
    d_out, d_hn, _, w_hh, w_hr, c0, gates, cs, lengths, reverse = a
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    proj = 0 if w_hr is None else P
    dev, f32 = gates.device, torch.float32
    n_slices = cfg.n_slices(H)
    block_cols = cfg.block_ps(H, proj) if proj else cfg.block_hs
    return dict(
        d_out=d_out.contiguous(),
        d_hn=d_hn.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=None if w_hr is None else w_hr.to(w_hh.dtype).contiguous(),
        c0=c0.contiguous(),
        gates=gates.contiguous(),
        cs=cs.contiguous(),
        lengths=lengths,
        d_xp=common.empty(T, B, G, dtype=f32, device=dev),
        d_hs=common.empty(T, B, P, dtype=f32, device=dev) if proj else None,
        dh_part=common.empty(2, n_slices, B, P, dtype=f32, device=dev),
        dh_tot=common.empty(B, P, dtype=f32, device=dev) if proj else None,
        T=T,
        B=B,
        H=H,
        P=P,
        REVERSE=bool(reverse),
        BLOCK_NS=cfg.block_ns(H, block_cols),
        DOT_PRECISION=dot_precision(w_hh.dtype),
        num_stages=cfg.num_stages,
        maxnreg=cfg.maxnreg,
        **_blocks(cfg, H, proj),
    )


def _backward_results(args: dict, d_c0: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    # d_h0 = da_0 W_hh: the partials of step s = 0 (every row is valid there, and both designs
    # write them to dh_part[0]), summed over slices by one deterministic reduction.
    return args["d_xp"], args["dh_part"][0].sum(0), d_c0, args["d_hs"]


def persistent_backward(
    a: common.BackwardArgs, cfg: PersistentConfig, *, cooperative: bool
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor | None], Tensor]:
    """Backpropagation through time in one launch; the contract of
    ``fastlstm.kernels.recurrence_backward``, plus the barrier's error flag (as forward)."""
    args = _backward_args(a, cfg)
    _, B, G = a.gates.shape
    grid = cfg.grid(B, G // 4)
    d_c0 = common.empty(B, G // 4, dtype=torch.float32, device=a.gates.device)
    sync = _barrier_counters(grid[1], a.gates.device)
    launch(
        _persistent_bwd_kernel,
        grid,
        num_warps=cfg.warps("persistent_bwd"),
        cooperative=cooperative,
        d_cn=a.d_cn.contiguous(),
        d_c0=d_c0,
        sync=sync,
        spin_limit=SPIN_LIMIT,
        **args,
    )
    return _backward_results(args, d_c0), sync[-1:]


def step_backward(
    a: common.BackwardArgs, cfg: PersistentConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backpropagation through time, one launch per step (two with a projection)."""
    args = _backward_args(a, cfg)
    T, B, G = a.gates.shape
    grid = cfg.grid(B, G // 4)
    d_c0 = common.empty(B, G // 4, dtype=torch.float32, device=a.gates.device)
    d_c0.copy_(a.d_cn)  # the gradient reaching c, updated in place step by step
    for s in range(T - 1, -1, -1):
        if a.w_hr is not None:
            launch(
                _step_bwd_kernel, grid, s=s, dc_state=d_c0, PROJ_PHASE=True,
                num_warps=cfg.warps("step_bwd_proj"), **args,
            )  # fmt: skip
        launch(
            _step_bwd_kernel, grid, s=s, dc_state=d_c0, PROJ_PHASE=False,
            num_warps=cfg.warps("step_bwd_cell"), **args,
        )  # fmt: skip
    return _backward_results(args, d_c0)
