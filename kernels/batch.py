"""Batch-tiled LSTM recurrence: one launch runs a direction's whole time loop.

Each program owns ``BLOCK_B`` rows of the batch and all hidden units, so a step needs no
communication between programs: the recurrent matmul over hidden tiles and K-chunks
(``W_hh`` streamed from L2 every step), the gates and the cell update, then a CTA barrier so
that every thread sees the new ``h`` before the next step reads it. ``h`` and ``c`` live in
small fp32 per-program buffers (a step reads ``h`` in chunks of another shape than the tiles
it writes); ``h`` is double-buffered so a step's writes do not race its own reads. The
equations, the memory traffic and what backward saves are in docs/kernels.md.

Reads top to bottom: forward kernel, backward kernel, the launchers (allocate, grid, launch).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from . import common
from .common import optional_inputs, positions, sigmoid, tanh, tile_lengths
from .launch import BatchConfig, dot_precision, launch

__all__ = ["backward", "forward"]


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


@optional_inputs
@triton.jit(do_not_specialize=["T", "B"])
def _batch_fwd_kernel(
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
    b_len = tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)  # [BB]
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
        m_valid, o_t = positions(b_len, m_b, s, REVERSE)  # [BB], [BB]
        mv = m_valid[:, None]
        o_row = o_t * B + o_b  # [BB] row of [T, B, *]

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
            b_i = sigmoid(acc_i)
            b_f = sigmoid(acc_f)
            b_g = tanh(acc_g)
            b_o = sigmoid(acc_o)
            p_c = c_state + o_b[:, None] * H + o_h[None, :]
            b_c_old = tl.load(p_c, mask=m_bh, other=0.0)
            b_c = b_f * b_c_old + b_i * b_g
            b_r = b_o * tanh(b_c)
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


@optional_inputs
@triton.jit(do_not_specialize=["T", "B"])
def _batch_bwd_kernel(
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
    b_len = tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS)  # [BB]
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
        m_valid, o_t = positions(b_len, m_b, s, REVERSE)  # [BB], [BB]
        mv = m_valid[:, None]
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
            b_tc = tanh(b_c)
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


def _kernel_options(cfg: BatchConfig, hidden: int, proj: int, reverse: bool, dtype) -> dict:
    """The constexprs and launch options both kernels take for one call."""
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


def forward(
    a: common.ForwardArgs, cfg: BatchConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The forward time loop in one launch (no autograd); the contract of
    ``fastlstm.kernels.recurrence_forward``."""
    xp, w_hh, w_hr, h0, c0, lengths, reverse = a
    T, B, G = xp.shape
    H, P = G // 4, w_hh.shape[1]
    dev, f32 = xp.device, torch.float32
    has_proj = w_hr is not None
    out = common.empty(T, B, P, dtype=xp.dtype, device=dev)
    h_n = common.empty(B, P, dtype=h0.dtype, device=dev)
    c_n = common.empty(B, H, dtype=c0.dtype, device=dev)
    gates = common.empty(T, B, G, dtype=f32, device=dev)
    cs = common.empty(T, B, H, dtype=f32, device=dev)
    launch(
        _batch_fwd_kernel,
        cfg.grid(B),
        xp=xp.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=w_hr.to(w_hh.dtype).contiguous() if has_proj else None,
        h0=h0.contiguous(),
        c0=c0.contiguous(),
        lengths=lengths,
        out=out,
        h_n=h_n,
        c_n=c_n,
        gates=gates,
        cs=cs,
        h_state=common.empty(2, B, P, dtype=f32, device=dev),
        c_state=common.empty(B, H, dtype=f32, device=dev),
        r_state=common.empty(B, H, dtype=f32, device=dev) if has_proj else None,
        T=T,
        B=B,
        **_kernel_options(cfg, H, P if has_proj else 0, reverse, w_hh.dtype),
    )
    return out, h_n, c_n, gates, cs


def backward(
    a: common.BackwardArgs, cfg: BatchConfig
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backpropagation through time in one launch; the contract of
    ``fastlstm.kernels.recurrence_backward``."""
    d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse = a
    T, B, G = gates.shape
    H, P = G // 4, w_hh.shape[1]
    dev, f32 = gates.device, torch.float32
    has_proj = w_hr is not None
    d_xp = common.empty(T, B, G, dtype=f32, device=dev)
    d_h0 = common.empty(B, P, dtype=f32, device=dev)
    d_c0 = common.empty(B, H, dtype=f32, device=dev)
    d_hs = common.empty(T, B, P, dtype=f32, device=dev) if has_proj else None
    launch(
        _batch_bwd_kernel,
        cfg.grid(B),
        d_out=d_out.contiguous(),
        d_hn=d_hn.contiguous(),
        d_cn=d_cn.contiguous(),
        w_hh=w_hh.contiguous(),
        w_hr=w_hr.to(w_hh.dtype).contiguous() if has_proj else None,
        c0=c0.contiguous(),
        gates=gates.contiguous(),
        cs=cs.contiguous(),
        lengths=lengths,
        d_xp=d_xp,
        d_h0=d_h0,
        d_c0=d_c0,
        d_hs=d_hs,
        dh_state=common.empty(B, P, dtype=f32, device=dev),
        dc_state=common.empty(B, H, dtype=f32, device=dev),
        dh_tot=common.empty(B, P, dtype=f32, device=dev) if has_proj else None,
        T=T,
        B=B,
        **_kernel_options(cfg, H, P if has_proj else 0, reverse, w_hh.dtype),
    )
    return d_xp, d_h0, d_c0, d_hs
