"""Fused LSTM recurrence in Triton, batch-tiled: one launch runs a direction's whole time loop.

Reads top to bottom: ``@triton.jit`` helpers, forward kernel, backward kernel, the batch-tiled
launchers (``batch_forward``/``batch_backward``: allocate, build the grid, launch; no
autograd), the recurrence pair ``lstm_recurrence_forward``/``backward`` that dispatches to the
design ``kernels.launch.choose_design`` picks (this one, or ``kernels/persistent.py``'s),
``resource_cases()`` for ``benchmarks/kernel_resources.py``, and the public
:func:`lstm_direction`. The equations, what each kernel keeps on chip and what it stores for
backward are derived in ``docs/kernels.md``; gate order is i, f, g, o as in
``torch.nn.LSTM``, ``P`` = proj_size or H.

Work split. The input projection ``x W_ih^T + b`` for all steps is one GEMM before the loop,
and the weight, input and bias gradients are GEMMs/reductions after the backward loop; only
the sequential part runs in the kernels. Each program owns ``BLOCK_B`` rows of the batch and
all hidden units, so one step needs no communication between programs: a step is the
recurrent matmul over hidden tiles and K-chunks (``W_hh`` streamed from L2 every step),
the gate nonlinearities and the cell update, then a CTA barrier so that every thread sees
the new ``h`` before the next step reads it. ``h`` and ``c`` live in small fp32 per-program
state buffers (L1/L2-resident) rather than registers, because a step reads ``h`` in chunks
that differ from the tiles it writes; ``h`` is double-buffered so that a step's writes do
not race its own reads. Optional inputs (``lengths``, ``w_hr`` and the projection's
buffers) are ``None`` pointers switched by ``@triton.heuristics``.

Variable lengths. Row ``b`` at step ``s`` works on sequence position ``s`` (or
``len_b - 1 - s`` when ``reverse``), so each sequence starts at its own first (or last)
valid position with no pack/unpack copies. Rows with ``s >= len_b`` keep their state and
write zeros at position ``s``; a program loops to the longest length in its tile, and the
positions past it are zero-filled (store-only) before the loop. The last step stores the
final state, so nothing stays live past the loop (no spills: see ``docs/kernels.md``).
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl
from torch import Tensor

from fastlstm import direction

from .launch import (
    KernelBuild,
    RecurrenceConfig,
    choose_design,
    dot_precision,
    launch,
    recurrence_config,
    unsupported_reason,
)

__all__ = [
    "batch_backward",
    "batch_forward",
    "can_serve",
    "lstm_direction",
    "lstm_recurrence_backward",
    "lstm_recurrence_forward",
    "resource_cases",
]


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x):
    # Via sigmoid: libdevice tanh is unavailable in the interpreter; exact in fp32 to ~1 ulp.
    return 2.0 * _sigmoid(2.0 * x) - 1.0


@triton.jit
def _tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS: tl.constexpr):
    """[BB] int64 valid length of each row of the tile; 0 for rows past the batch."""
    if HAS_LENGTHS:
        b_len = tl.load(lengths + o_b, mask=m_b, other=0).to(tl.int64)
    else:
        b_len = tl.where(m_b, T, 0).to(tl.int64)
    return b_len


@triton.jit
def _positions(b_len, m_valid, s, REVERSE: tl.constexpr):
    """[BB] sequence position each row works on at step ``s``: ``s``, or ``len - 1 - s``
    backwards, so a reversed row starts at its own last valid step."""
    if REVERSE:  # noqa: SIM108 (a constexpr branch, not a runtime select)
        o_t = tl.where(m_valid, b_len - 1 - s, s)
    else:
        o_t = tl.zeros_like(b_len) + s
    return o_t


@triton.jit
def _copy_rows(src, dst, o_b, m_b, N: tl.constexpr, BLOCK_N: tl.constexpr):
    """``dst[b, :N] = src[b, :N]`` for the tile's rows, cast to ``dst``'s type: the initial
    state (or gradient) into the fp32 scratch before the time loop."""
    for j in range(0, (N + BLOCK_N - 1) // BLOCK_N):
        o_n = j * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        m = m_b[:, None] & (o_n < N)[None, :]
        b_v = tl.load(src + o_b[:, None] * N + o_n[None, :], mask=m, other=0.0)
        tl.store(dst + o_b[:, None] * N + o_n[None, :], b_v.to(dst.dtype.element_ty), mask=m)


@triton.jit
def _zero_rows(dst, o_row, m_b, N: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr):
    """``dst[row, :N] = 0`` for the tile's rows at one position (``o_row = position*B + b``):
    the positions past the longest sequence of a tile, which the time loop never visits.
    Written before the loop, so that nothing computed for them stays live across it."""
    for j in range(0, (N + BLOCK_N - 1) // BLOCK_N):
        o_n = j * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
        m = m_b[:, None] & (o_n < N)[None, :]
        zero = tl.zeros([BLOCK_B, BLOCK_N], dtype=dst.dtype.element_ty)
        tl.store(dst + o_row[:, None] * N + o_n[None, :], zero, mask=m)


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["T", "B"])
def _lstm_fwd_kernel(
    xp,  # [T, B, 4H] input projection with biases (x dtype)
    w_hh,  # [4H, P] recurrent weight
    w_hr,  # [P, H] projection weight, or None
    h0,  # [B, P] initial hidden state
    c0,  # [B, H] initial cell state
    lengths,  # [B] int64 valid lengths, or None (all T)
    out,  # [T, B, P] output h per position, zero past each length
    h_n,  # [B, P] h at each sequence's last valid step
    c_n,  # [B, H] c at each sequence's last valid step
    gates,  # [T, B, 4H] fp32 gate activations, saved for backward
    cs,  # [T, B, H] fp32 cell state after each step, saved for backward
    h_state,  # [2, B, P] fp32 scratch: h of the previous / current step
    c_state,  # [B, H] fp32 scratch: c
    r_state,  # [B, H] fp32 scratch: o * tanh(c) before the projection, or None
    T,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)  # [BB]
    m_b = o_b < B
    b_len = _tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)  # [BB]
    n_steps = tl.max(b_len, 0)
    w_dtype = w_hh.dtype.element_ty
    NH: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    NP: tl.constexpr = (P + BLOCK_K - 1) // BLOCK_K
    # NP as a trip count LLVM cannot prove constant (T >= 1): unrolled, the K loop hoists
    # every chunk's W_hh loads at once and spills (benchmarks/kernel_resources.py).
    n_k = tl.minimum(NP, NP + T)
    n_h = tl.minimum(NH, NH + T)

    _copy_rows(h0, h_state, o_b, m_b, P, BLOCK_K)
    _copy_rows(c0, c_state, o_b, m_b, H, BLOCK_H)
    for s in range(n_steps, T):
        o_row = s * B + o_b  # [BB]
        _zero_rows(out, o_row, m_b, P, BLOCK_B, BLOCK_K)
        _zero_rows(cs, o_row, m_b, H, BLOCK_B, BLOCK_H)
        _zero_rows(gates, o_row, m_b, 4 * H, BLOCK_B, BLOCK_H)
    tl.debug_barrier()

    for s in range(0, n_steps):
        # Finished rows keep their state, so the last step's state is every row's final one:
        # h_n and c_n are stored then, and nothing stays live past the loop.
        m_last = (tl.zeros_like(b_len) + s) == n_steps - 1  # [BB]
        p_h_cur = h_state + (s % 2) * B * P
        p_h_nxt = h_state + ((s + 1) % 2) * B * P
        m_valid = m_b & (s < b_len)  # [BB]
        mv = m_valid[:, None]
        o_row = _positions(b_len, m_valid, s, REVERSE) * B + o_b  # [BB] row of [T, B, *]

        for j in range(0, NH):
            o_h = j * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
            m_h = o_h < H
            m_bh = m_b[:, None] & m_h[None, :]
            p_x = xp + o_row[:, None] * (4 * H) + o_h[None, :]
            acc_i = tl.load(p_x, mask=m_bh, other=0.0).to(tl.float32)  # [BB, BH]
            acc_f = tl.load(p_x + H, mask=m_bh, other=0.0).to(tl.float32)
            acc_g = tl.load(p_x + 2 * H, mask=m_bh, other=0.0).to(tl.float32)
            acc_o = tl.load(p_x + 3 * H, mask=m_bh, other=0.0).to(tl.float32)
            for k in range(0, n_k):
                o_k = k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
                m_k = o_k < P
                b_h = tl.load(
                    p_h_cur + o_b[:, None] * P + o_k[None, :],
                    mask=m_b[:, None] & m_k[None, :],
                    other=0.0,
                ).to(w_dtype)  # [BB, BK]
                # W_hh^T[k, gate column]: element (row g*H + col, column k) of w_hh.
                p_w = w_hh + o_h[None, :] * P + o_k[:, None]  # [BK, BH]
                m_w = m_k[:, None] & m_h[None, :]
                b_w = tl.load(p_w, mask=m_w, other=0.0)
                acc_i += tl.dot(b_h, b_w, input_precision=DOT_PRECISION)
                b_w = tl.load(p_w + H * P, mask=m_w, other=0.0)
                acc_f += tl.dot(b_h, b_w, input_precision=DOT_PRECISION)
                b_w = tl.load(p_w + 2 * H * P, mask=m_w, other=0.0)
                acc_g += tl.dot(b_h, b_w, input_precision=DOT_PRECISION)
                b_w = tl.load(p_w + 3 * H * P, mask=m_w, other=0.0)
                acc_o += tl.dot(b_h, b_w, input_precision=DOT_PRECISION)
            b_i = _sigmoid(acc_i)
            b_f = _sigmoid(acc_f)
            b_g = _tanh(acc_g)
            b_o = _sigmoid(acc_o)
            p_c = c_state + o_b[:, None] * H + o_h[None, :]
            b_c_old = tl.load(p_c, mask=m_bh, other=0.0)
            b_c = b_f * b_c_old + b_i * b_g
            b_r = b_o * _tanh(b_c)
            b_c = tl.where(mv, b_c, b_c_old)
            tl.store(p_c, b_c, mask=m_bh)
            p_cn = c_n + o_b[:, None] * H + o_h[None, :]
            tl.store(p_cn, b_c.to(c_n.dtype.element_ty), mask=m_bh & m_last[:, None])
            # Saved at the sequence position; zeros at padded positions keep backward finite.
            p_gt = gates + o_row[:, None] * (4 * H) + o_h[None, :]
            tl.store(p_gt, tl.where(mv, b_i, 0.0), mask=m_bh)
            tl.store(p_gt + H, tl.where(mv, b_f, 0.0), mask=m_bh)
            tl.store(p_gt + 2 * H, tl.where(mv, b_g, 0.0), mask=m_bh)
            tl.store(p_gt + 3 * H, tl.where(mv, b_o, 0.0), mask=m_bh)
            tl.store(cs + o_row[:, None] * H + o_h[None, :], tl.where(mv, b_c, 0.0), mask=m_bh)
            if HAS_PROJ:
                tl.store(r_state + o_b[:, None] * H + o_h[None, :], b_r, mask=m_bh)
            else:
                b_h_old = tl.load(p_h_cur + o_b[:, None] * P + o_h[None, :], mask=m_bh, other=0.0)
                b_h = tl.where(mv, b_r, b_h_old)
                tl.store(p_h_nxt + o_b[:, None] * P + o_h[None, :], b_h, mask=m_bh)
                p_hn = h_n + o_b[:, None] * P + o_h[None, :]
                tl.store(p_hn, b_h.to(h_n.dtype.element_ty), mask=m_bh & m_last[:, None])
                tl.store(
                    out + o_row[:, None] * P + o_h[None, :],
                    tl.where(mv, b_r, 0.0).to(out.dtype.element_ty),
                    mask=m_bh,
                )

        if HAS_PROJ:
            # h_t = r_t W_hr^T needs all of r_t: wait for every hidden tile.
            tl.debug_barrier()
            for j in range(0, NP):
                o_p = j * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
                m_p = o_p < P
                m_bp = m_b[:, None] & m_p[None, :]
                acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
                for k in range(0, n_h):
                    o_k = k * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
                    m_k = o_k < H
                    b_r = tl.load(
                        r_state + o_b[:, None] * H + o_k[None, :],
                        mask=m_b[:, None] & m_k[None, :],
                        other=0.0,
                    ).to(w_dtype)  # [BB, BH]
                    b_w = tl.load(
                        w_hr + o_p[None, :] * H + o_k[:, None],
                        mask=m_k[:, None] & m_p[None, :],
                        other=0.0,
                    ).to(w_dtype)  # [BH, BK]
                    acc += tl.dot(b_r, b_w, input_precision=DOT_PRECISION)
                b_h_old = tl.load(p_h_cur + o_b[:, None] * P + o_p[None, :], mask=m_bp, other=0.0)
                b_h = tl.where(mv, acc, b_h_old)
                tl.store(p_h_nxt + o_b[:, None] * P + o_p[None, :], b_h, mask=m_bp)
                p_hn = h_n + o_b[:, None] * P + o_p[None, :]
                tl.store(p_hn, b_h.to(h_n.dtype.element_ty), mask=m_bp & m_last[:, None])
                tl.store(
                    out + o_row[:, None] * P + o_p[None, :],
                    tl.where(mv, acc, 0.0).to(out.dtype.element_ty),
                    mask=m_bp,
                )
        tl.debug_barrier()


@triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)
@triton.jit(do_not_specialize=["T", "B"])
def _lstm_bwd_kernel(
    d_out,  # [T, B, P] gradient w.r.t. out
    d_hn,  # [B, P] gradient w.r.t. h_n
    d_cn,  # [B, H] gradient w.r.t. c_n
    w_hh,  # [4H, P]
    w_hr,  # [P, H], or None
    c0,  # [B, H]
    gates,  # [T, B, 4H] fp32 saved activations i, f, g, o
    cs,  # [T, B, H] fp32 saved cell states
    lengths,  # [B] int64, or None (all T)
    d_xp,  # [T, B, 4H] fp32 gradient w.r.t. the gate pre-activations
    d_h0,  # [B, P] fp32
    d_c0,  # [B, H] fp32
    d_hs,  # [T, B, P] fp32 total gradient reaching each projected h, or None
    dh_state,  # [B, P] fp32 scratch: gradient reaching h from the later steps
    dc_state,  # [B, H] fp32 scratch: gradient reaching c from the later steps
    dh_tot,  # [B, P] fp32 scratch: dh_state + d_out of this step, or None
    T,
    B,
    H: tl.constexpr,
    P: tl.constexpr,
    REVERSE: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_K: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    HAS_LENGTHS: tl.constexpr,
    HAS_PROJ: tl.constexpr,
):
    i_b = tl.program_id(0).to(tl.int64)
    o_b = i_b * BLOCK_B + tl.arange(0, BLOCK_B).to(tl.int64)  # [BB]
    m_b = o_b < B
    b_len = _tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)  # [BB]
    n_steps = tl.max(b_len, 0)
    w_dtype = w_hh.dtype.element_ty
    NH: tl.constexpr = (H + BLOCK_H - 1) // BLOCK_H
    NP: tl.constexpr = (P + BLOCK_K - 1) // BLOCK_K
    NG: tl.constexpr = (4 * H + BLOCK_H - 1) // BLOCK_H
    # Trip counts LLVM cannot prove constant (T >= 1), so that the K loops stay loops (see
    # the forward kernel).
    n_k = tl.minimum(NP, NP + T)
    n_g = tl.minimum(NG, NG + T)

    _copy_rows(d_hn, dh_state, o_b, m_b, P, BLOCK_K)
    _copy_rows(d_cn, dc_state, o_b, m_b, H, BLOCK_H)
    for s in range(n_steps, T):
        o_row = s * B + o_b  # [BB]
        _zero_rows(d_xp, o_row, m_b, 4 * H, BLOCK_B, BLOCK_H)
        if HAS_PROJ:
            _zero_rows(d_hs, o_row, m_b, P, BLOCK_B, BLOCK_K)
    tl.debug_barrier()

    for i in range(0, n_steps):
        s = n_steps - 1 - i
        m_valid = m_b & (s < b_len)  # [BB]
        mv = m_valid[:, None]
        o_t = _positions(b_len, m_valid, s, REVERSE)  # [BB]
        # The position processed one step earlier holds c_{t-1}.
        o_prev = o_t + 1 if REVERSE else o_t - 1
        o_row = o_t * B + o_b  # [BB]
        o_row_prev = o_prev * B + o_b
        s_vec = tl.zeros_like(b_len) + s  # [BB]
        m_has_prev = m_valid & (s_vec > 0)  # c_{t-1} is a saved state
        # c_{t-1} is c0. Every row's step 0 is the loop's last: d_h0, d_c0 are stored then.
        m_first = m_valid & (s_vec == 0)

        if HAS_PROJ:
            # The gradient reaching h_t, needed whole by dr = dh W_hr.
            for j in range(0, NP):
                o_p = j * BLOCK_K + tl.arange(0, BLOCK_K)
                m_bp = m_b[:, None] & (o_p < P)[None, :]
                b_dh = tl.load(dh_state + o_b[:, None] * P + o_p[None, :], mask=m_bp, other=0.0)
                b_dh += tl.load(
                    d_out + o_row[:, None] * P + o_p[None, :], mask=m_bp & mv, other=0.0
                ).to(tl.float32)
                tl.store(dh_tot + o_b[:, None] * P + o_p[None, :], b_dh, mask=m_bp)
                tl.store(
                    d_hs + o_row[:, None] * P + o_p[None, :], tl.where(mv, b_dh, 0.0), mask=m_bp
                )
            tl.debug_barrier()

        for j in range(0, NH):
            o_h = j * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH]
            m_h = o_h < H
            m_bh = m_b[:, None] & m_h[None, :]
            if HAS_PROJ:
                b_dr = tl.zeros([BLOCK_B, BLOCK_H], dtype=tl.float32)
                for k in range(0, n_k):
                    o_k = k * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
                    m_k = o_k < P
                    b_dh = tl.load(
                        dh_tot + o_b[:, None] * P + o_k[None, :],
                        mask=m_b[:, None] & m_k[None, :],
                        other=0.0,
                    ).to(w_dtype)  # [BB, BK]
                    b_w = tl.load(
                        w_hr + o_k[:, None] * H + o_h[None, :],
                        mask=m_k[:, None] & m_h[None, :],
                        other=0.0,
                    ).to(w_dtype)  # [BK, BH]
                    b_dr += tl.dot(b_dh, b_w, input_precision=DOT_PRECISION)
            else:
                b_dr = tl.load(dh_state + o_b[:, None] * P + o_h[None, :], mask=m_bh, other=0.0)
                b_dr += tl.load(
                    d_out + o_row[:, None] * P + o_h[None, :], mask=m_bh & mv, other=0.0
                ).to(tl.float32)
            p_gt = gates + o_row[:, None] * (4 * H) + o_h[None, :]
            b_i = tl.load(p_gt, mask=m_bh & mv, other=0.0)
            b_f = tl.load(p_gt + H, mask=m_bh & mv, other=0.0)
            b_g = tl.load(p_gt + 2 * H, mask=m_bh & mv, other=0.0)
            b_o = tl.load(p_gt + 3 * H, mask=m_bh & mv, other=0.0)
            b_c = tl.load(cs + o_row[:, None] * H + o_h[None, :], mask=m_bh & mv, other=0.0)
            b_cp = tl.load(
                cs + o_row_prev[:, None] * H + o_h[None, :],
                mask=m_bh & m_has_prev[:, None],
                other=0.0,
            ) + tl.load(
                c0 + o_b[:, None] * H + o_h[None, :], mask=m_bh & m_first[:, None], other=0.0
            ).to(tl.float32)
            b_tc = _tanh(b_c)
            p_dc = dc_state + o_b[:, None] * H + o_h[None, :]
            b_dc_old = tl.load(p_dc, mask=m_bh, other=0.0)
            b_dc = b_dc_old + b_dr * b_o * (1.0 - b_tc * b_tc)
            p_da = d_xp + o_row[:, None] * (4 * H) + o_h[None, :]
            tl.store(p_da, tl.where(mv, b_dc * b_g * b_i * (1.0 - b_i), 0.0), mask=m_bh)
            tl.store(p_da + H, tl.where(mv, b_dc * b_cp * b_f * (1.0 - b_f), 0.0), mask=m_bh)
            tl.store(p_da + 2 * H, tl.where(mv, b_dc * b_i * (1.0 - b_g * b_g), 0.0), mask=m_bh)
            tl.store(p_da + 3 * H, tl.where(mv, b_dr * b_tc * b_o * (1.0 - b_o), 0.0), mask=m_bh)
            b_dc = tl.where(mv, b_dc * b_f, b_dc_old)
            tl.store(p_dc, b_dc, mask=m_bh)
            p_dc0 = d_c0 + o_b[:, None] * H + o_h[None, :]
            tl.store(p_dc0, b_dc, mask=m_bh & m_first[:, None])
        # dh_{t-1} = da_t W_hh needs all four gates of every hidden unit.
        tl.debug_barrier()

        for j in range(0, NP):
            o_p = j * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
            m_p = o_p < P
            m_bp = m_b[:, None] & m_p[None, :]
            acc = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
            for k in range(0, n_g):
                o_k = k * BLOCK_H + tl.arange(0, BLOCK_H)  # [BH] over the 4H gate columns
                m_k = o_k < 4 * H
                b_da = tl.load(
                    d_xp + o_row[:, None] * (4 * H) + o_k[None, :],
                    mask=m_b[:, None] & m_k[None, :],
                    other=0.0,
                ).to(w_dtype)  # [BB, BH]
                b_w = tl.load(
                    w_hh + o_k[:, None] * P + o_p[None, :],
                    mask=m_k[:, None] & m_p[None, :],
                    other=0.0,
                )  # [BH, BK]
                acc += tl.dot(b_da, b_w, input_precision=DOT_PRECISION)
            p_dh = dh_state + o_b[:, None] * P + o_p[None, :]
            b_dh_old = tl.load(p_dh, mask=m_bp, other=0.0)
            b_dh = tl.where(mv, acc, b_dh_old)
            tl.store(p_dh, b_dh, mask=m_bp)
            p_dh0 = d_h0 + o_b[:, None] * P + o_p[None, :]
            tl.store(p_dh0, b_dh, mask=m_bp & m_first[:, None])
        tl.debug_barrier()


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer the launchers hand to a kernel; tests swap in a NaN-filled version."""
    return torch.empty(*shape, dtype=dtype, device=device)


def _kernel_options(
    cfg: RecurrenceConfig, hidden: int, proj: int, reverse: bool, dtype: torch.dtype
) -> dict:
    """The constexprs and launch options both batch-tiled kernels take for one call; the
    launchers and :func:`resource_cases` share it, so the compiled builds are the launched
    ones. ``HAS_LENGTHS``/``HAS_PROJ`` come from the arguments (``@triton.heuristics``)."""
    return dict(
        H=hidden,
        P=proj or hidden,
        REVERSE=bool(reverse),
        BLOCK_B=cfg.block_b,
        BLOCK_H=cfg.block_h,
        BLOCK_K=cfg.block_k,
        DOT_PRECISION=dot_precision(dtype),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages,
        maxnreg=cfg.maxnreg,
    )


def batch_forward(
    xp: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The batch-tiled design's forward: the whole time loop in one launch (no autograd).

    Same contract as :func:`lstm_recurrence_forward`, which dispatches here for
    ``design == "batch"``.
    """
    T, B, G = xp.shape
    H, P = G // 4, w_hh.shape[1]
    dev, f32 = xp.device, torch.float32
    cfg = recurrence_config(B, H, P, w_hh.dtype)
    has_proj = w_hr is not None
    out = _empty(T, B, P, dtype=xp.dtype, device=dev)
    h_n = _empty(B, P, dtype=h0.dtype, device=dev)
    c_n = _empty(B, H, dtype=c0.dtype, device=dev)
    gates = _empty(T, B, G, dtype=f32, device=dev)
    cs = _empty(T, B, H, dtype=f32, device=dev)
    launch(
        _lstm_fwd_kernel,
        (triton.cdiv(B, cfg.block_b),),
        device=dev,
        xp=xp.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=w_hr.to(w_hh.dtype).contiguous() if has_proj else None,
        h0=h0.contiguous(),
        c0=c0.contiguous(),
        lengths=None if lengths is None else lengths.contiguous(),
        out=out,
        h_n=h_n,
        c_n=c_n,
        gates=gates,
        cs=cs,
        h_state=_empty(2, B, P, dtype=f32, device=dev),
        c_state=_empty(B, H, dtype=f32, device=dev),
        r_state=_empty(B, H, dtype=f32, device=dev) if has_proj else None,
        T=T,
        B=B,
        **_kernel_options(cfg, H, P if has_proj else 0, reverse, w_hh.dtype),
    )
    return out, h_n, c_n, gates, cs


def batch_backward(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The batch-tiled design's backward through time in one launch.

    Same contract as :func:`lstm_recurrence_backward`, which dispatches here for
    ``design == "batch"``.
    """
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    dev, f32 = gates.device, torch.float32
    cfg = recurrence_config(B, H, P, w_hh.dtype)
    has_proj = w_hr is not None
    d_xp = _empty(T, B, G, dtype=f32, device=dev)
    d_h0 = _empty(B, P, dtype=f32, device=dev)
    d_c0 = _empty(B, H, dtype=f32, device=dev)
    d_hs = _empty(T, B, P, dtype=f32, device=dev) if has_proj else None
    launch(
        _lstm_bwd_kernel,
        (triton.cdiv(B, cfg.block_b),),
        device=dev,
        d_out=d_out.contiguous(),
        d_hn=d_hn.contiguous(),
        d_cn=d_cn.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=w_hr.to(w_hh.dtype).contiguous() if has_proj else None,
        c0=c0.contiguous(),
        gates=gates.contiguous(),
        cs=cs.contiguous(),
        lengths=None if lengths is None else lengths.contiguous(),
        d_xp=d_xp,
        d_h0=d_h0,
        d_c0=d_c0,
        d_hs=d_hs,
        dh_state=_empty(B, P, dtype=f32, device=dev),
        dc_state=_empty(B, H, dtype=f32, device=dev),
        dh_tot=_empty(B, P, dtype=f32, device=dev) if has_proj else None,
        T=T,
        B=B,
        **_kernel_options(cfg, H, P if has_proj else 0, reverse, w_hh.dtype),
    )
    return d_xp, d_h0, d_c0, d_hs


def lstm_recurrence_forward(
    xp: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the recurrence over a precomputed input projection (no autograd).

    Same contract as ``fastlstm.backends.reference.recurrence_forward``. The kernel design
    (batch-tiled, persistent or one launch per step) is :func:`choose_design`'s, which
    ``FASTLSTM_TRITON_DESIGN`` can force.

    Args:
        xp: ``[T, B, 4H]`` input projection with both biases added.
        w_hh: ``[4H, P]`` recurrent weight; w_hr: ``[P, H]`` projection weight or None.
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state.
        lengths: ``[B]`` int64 valid lengths (``1 <= len <= T``) on ``xp.device``, or None.
        reverse: run each sequence backwards from its own last valid step.

    Returns:
        ``out [T, B, P]`` (dtype of ``xp``, zero past each length), ``h_n [B, P]``,
        ``c_n [B, H]``, and for backward ``gates [T, B, 4H]`` (activations i, f, g, o) and
        ``cs [T, B, H]`` (cell state after each step), both fp32, at sequence positions and
        zero at padded positions. Every design saves this same layout, so a backward may
        run on another design than its forward (if ``FASTLSTM_TRITON_DESIGN`` changed).

    Raises:
        ValueError: ``FASTLSTM_TRITON_DESIGN`` is not a design name.
        RuntimeError: the forced design cannot serve this call.
    """
    design = _design(xp.device, w_hh, w_hr, xp.shape[1], lengths)
    if design == "batch":
        return batch_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    from .persistent import persistent_forward

    return persistent_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse, design=design)


def lstm_recurrence_backward(
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
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backpropagation through time over the saved ``gates`` and ``cs``.

    Same contract as ``fastlstm.backends.reference.recurrence_backward``: returns
    ``d_xp [T, B, 4H]`` (zero past each length), ``d_h0 [B, P]``, ``d_c0 [B, H]`` and, with a
    projection, ``d_hs [T, B, P]`` (the total gradient reaching each step's projected h, for
    ``dW_hr``), else None; all fp32. The design is chosen from the same inputs as the
    forward's, so both passes run the same design.
    """
    design = _design(gates.device, w_hh, w_hr, gates.shape[1], lengths)
    if design == "batch":
        return batch_backward(d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    from .persistent import persistent_backward

    return persistent_backward(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse, design=design
    )


def _design(device, w_hh: Tensor, w_hr: Tensor | None, batch: int, lengths) -> str:
    proj = 0 if w_hr is None else w_hr.shape[0]
    hidden = w_hh.shape[0] // 4
    design, _ = choose_design(device, w_hh.dtype, batch, hidden, proj, lengths is not None)
    return design


_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# Pointer arguments in the weights'/inputs' dtype; every other pointer is fp32 (or int64
# lengths); the optional ones are None pointers without a projection.
_WEIGHT_DTYPE_ARGS = ("xp", "w_hh", "w_hr", "h0", "c0", "out", "h_n", "c_n", "d_out")
_WEIGHT_DTYPE_ARGS += ("d_hn", "d_cn")
_NONE_WITHOUT_PROJ = ("w_hr", "r_state", "d_hs", "dh_tot")
_KERNELS = (("batch_fwd", _lstm_fwd_kernel), ("batch_bwd", _lstm_bwd_kernel))
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "maxnreg")


def _build(name, kernel, dtype: str, constexprs: dict, options: dict, fields: dict):
    """A :class:`KernelBuild` for one batch-tiled kernel: every argument that is not a
    constexpr gets its Triton type, the optional pointers left out become None."""
    fn = kernel.fn  # unwrap @triton.heuristics: its outputs are in constexprs
    cx = dict(constexprs)
    signature = {}
    for arg in fn.arg_names:
        if arg in cx:
            continue
        if arg in ("T", "B"):
            signature[arg] = "i32"
        elif arg == "lengths":
            if cx["HAS_LENGTHS"]:
                signature[arg] = "*i64"
            else:
                cx[arg] = None
        elif arg in _NONE_WITHOUT_PROJ and not cx["HAS_PROJ"]:
            cx[arg] = None
        elif arg in _WEIGHT_DTYPE_ARGS:
            signature[arg] = "*" + dtype
        else:
            signature[arg] = "*fp32"
    return KernelBuild(
        name=name,
        kernel=fn,
        signature=signature,
        constexprs=cx,
        num_warps=options["num_warps"],
        num_stages=options["num_stages"],
        dtype=dtype,
        hidden=cx["H"],
        fields=fields,
        maxnreg=options["maxnreg"],
    )


def resource_cases(
    hiddens: tuple[int, ...] = (64, 128, 256, 512, 1024),
    dtypes: tuple[torch.dtype, ...] = (torch.float32, torch.bfloat16, torch.float16),
    batch: int = 64,
    variants: tuple[tuple[bool, bool], ...] = (
        (False, False),
        (True, False),
        (False, True),
        (True, True),
    ),
) -> list[KernelBuild]:
    """Both batch-tiled kernels at every launch setting the launchers pick for ``batch``.

    ``variants`` are ``(lengths, projection)`` pairs (``proj_size = H // 2``); fp32 appears
    twice, with TF32 dots (``torch.backends.cudnn.allow_tf32``, the default) and exact ones.
    ``benchmarks/kernel_resources.py`` compiles them for sm_90.
    """
    builds = []
    for hidden in hiddens:
        for dtype in dtypes:
            precisions = ("tf32", "ieee") if dtype == torch.float32 else ("tf32",)
            for (has_lengths, has_proj), precision in itertools.product(variants, precisions):
                proj = hidden // 2 if has_proj else 0
                cfg = recurrence_config(batch, hidden, proj or hidden, dtype)
                options = _kernel_options(cfg, hidden, proj, False, dtype)
                constexprs = {k: v for k, v in options.items() if k not in _LAUNCH_OPTIONS}
                constexprs.update(
                    DOT_PRECISION=precision, HAS_LENGTHS=has_lengths, HAS_PROJ=has_proj
                )
                fields = {
                    "B": batch,
                    "lengths": int(has_lengths),
                    "proj": proj,
                    "precision": precision,
                    "tiles": f"{cfg.block_b}x{cfg.block_h}x{cfg.block_k}",
                    "warps": cfg.num_warps,
                    "design": "batch",
                }
                t = _TRITON_DTYPES[dtype]
                for name, kernel in _KERNELS:
                    builds.append(_build(name, kernel, t, constexprs, options, fields))
    return builds


def can_serve(x: Tensor, w_hh: Tensor, w_hr: Tensor | None = None) -> str | None:
    """Deprecated: :func:`unsupported_reason` for the request these tensors describe.

    ``fastlstm.backends.select_backend`` is where the library decides; this alias stays for
    callers that hold tensors rather than a request.
    """
    H = w_hh.shape[0] // 4
    P = 0 if w_hr is None else w_hr.shape[0]
    return unsupported_reason(x.device, x.dtype, H, P)


def _check_shape(name: str, t: Tensor | None, expected: tuple[int, ...]) -> None:
    if t is not None and tuple(t.shape) != expected:
        raise ValueError(f"{name} must have shape {list(expected)}, got {list(t.shape)}")


def _check_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths) -> None:
    if x.dim() != 3:
        raise ValueError(f"x must be 3-D [T, B, I], got shape {list(x.shape)}")
    T, B, I = x.shape
    if T == 0 or B == 0:
        raise ValueError(f"x must have T >= 1 and B >= 1, got shape {list(x.shape)}")
    if w_ih.dim() != 2 or w_ih.shape[0] % 4 != 0:
        raise ValueError(f"w_ih must be [4H, I], got shape {list(w_ih.shape)}")
    H = w_ih.shape[0] // 4
    P = H if w_hr is None else w_hr.shape[0]
    _check_shape("w_ih", w_ih, (4 * H, I))
    _check_shape("w_hh", w_hh, (4 * H, P))
    _check_shape("w_hr", w_hr, (P, H))
    _check_shape("b_ih", b_ih, (4 * H,))
    _check_shape("b_hh", b_hh, (4 * H,))
    _check_shape("h0", h0, (B, P))
    _check_shape("c0", c0, (B, H))
    named = {"x": x, "w_ih": w_ih, "w_hh": w_hh, "w_hr": w_hr, "b_ih": b_ih, "b_hh": b_hh}
    named.update(h0=h0, c0=c0)
    for name, t in named.items():
        if t is None:
            continue
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device}, expected {x.device} like x")
        if t.dtype != x.dtype:
            raise ValueError(f"{name} has dtype {t.dtype}, expected {x.dtype} like x")
    if lengths is not None:
        if lengths.shape != (B,) or lengths.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"lengths must be an int32/int64 tensor of shape [{B}], got "
                f"{lengths.dtype} of shape {list(lengths.shape)}"
            )
        if lengths.device != x.device:
            raise ValueError(f"lengths is on {lengths.device}, expected {x.device} like x")
        lo, hi = (int(v) for v in torch.aminmax(lengths))
        if lo < 1 or hi > T:
            raise ValueError(f"lengths must lie in [1, T={T}], got values in [{lo}, {hi}]")


def lstm_direction(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None = None,
    b_hh: Tensor | None = None,
    w_hr: Tensor | None = None,
    h0: Tensor | None = None,
    c0: Tensor | None = None,
    lengths: Tensor | None = None,
    reverse: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer with the fused Triton kernels (differentiable).

    The input projection is one GEMM, the whole time loop one kernel launch, and backward
    one launch for the time loop followed by GEMMs for the weight, input and bias gradients:
    the glue of :mod:`fastlstm.direction`, shared with every backend, over the kernels'
    recurrence pair. State and accumulation are fp32 whatever the input dtype. Double
    backward and ``torch.func`` transforms are refused with an error (use the reference).
    Under ``torch.autocast`` the floating inputs are cast to the autocast dtype first, as
    autocast does for ``nn.LSTM``.

    Args:
        x: ``[T, B, I]`` padded input (float32, bfloat16 or float16).
        w_ih: ``[4H, I]``; w_hh: ``[4H, P]`` weights, gate order i, f, g, o.
        b_ih, b_hh: ``[4H]`` biases, or None.
        w_hr: ``[P, H]`` projection weight (``proj_size = P``), or None (``P = H``).
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state; zeros when None.
        lengths: ``[B]`` integer valid lengths in ``[1, T]`` on ``x.device``, or None when
            every sequence has length ``T``.
        reverse: run each sequence backwards, starting at its own last valid step.

    Returns:
        ``out [T, B, P]`` (zero past each length), ``h_n [B, P]`` and ``c_n [B, H]`` taken at
        each sequence's last valid step.

    Raises:
        ValueError: shapes, dtypes, devices or lengths that do not fit together.
        RuntimeError: a request the kernels cannot serve (see
            :func:`fastlstm.kernels.launch.unsupported_reason`).
    """
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0 = direction.autocast_inputs(
        (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0), x.device.type
    )
    _check_args(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths)
    _, B, _ = x.shape
    H, P = w_hh.shape[0] // 4, w_hh.shape[1]
    reason = unsupported_reason(x.device, x.dtype, H, 0 if w_hr is None else P)
    if reason is not None:
        raise RuntimeError(f"the Triton LSTM kernels cannot run this call: {reason}")
    if h0 is None:
        h0 = x.new_zeros(B, P)
    if c0 is None:
        c0 = x.new_zeros(B, H)
    if lengths is not None:
        lengths = lengths.to(torch.int64)
    return direction.run_direction(
        _kernel_recurrence(), x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse
    )


def _kernel_recurrence() -> direction.Recurrence:
    # Looked up in the package at call time: fastlstm.kernels exports the recurrence pair
    # that picks between the kernel designs.
    from . import lstm_recurrence_backward as backward
    from . import lstm_recurrence_forward as forward

    return direction.Recurrence("triton", forward, backward)
