"""Reference backend: the LSTM recurrence in plain PyTorch, with hand-written BPTT.

This is the oracle every other backend is tested against, and the fallback that runs on any
device and dtype. It is written for clarity first, but it is not naive about cost:

- the input projection ``x @ W_ih^T + b`` for all timesteps is one GEMM before the loop;
- the time loop does only the recurrent matmul, the gate nonlinearities and the cell update;
- backward is backpropagation through time written by hand (reverse loop over the saved gate
  activations and cell states), and the weight gradients are single GEMMs after the loop,
  instead of autograd recording a graph of ~10 nodes per timestep.

Equations (gate order i, f, g, o as in ``torch.nn.LSTM``; ``P`` = proj_size or ``H``)::

    a_t = x_t W_ih^T + b_ih + b_hh + h_{t-1} W_hh^T        # [B, 4H]
    i, f, o = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o);  g = tanh(a_g)
    c_t = f * c_{t-1} + i * g
    r_t = o * tanh(c_t)                                     # [B, H]
    h_t = r_t W_hr^T  if proj_size else r_t                 # [B, P]

Variable lengths: a sequence's state is frozen after its last valid step, its output is zero
there, and ``reverse`` runs each sequence backwards from its own last valid step. The
reference implements reversal by reversing every sequence within its length (an involutive
gather), running forward, and reversing the results back.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastlstm.sequences import previous_states, reverse_within_lengths

__all__ = [
    "recurrence_backward",
    "recurrence_forward",
    "run_direction",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    # State and accumulation in fp32 for half types; float64 stays float64 for gradcheck.
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _step_masks(lengths: Tensor | None, T: int) -> Tensor | None:
    """``[T, B, 1]`` boolean: step ``t`` of sequence ``b`` is valid (``t < lengths[b]``)."""
    if lengths is None:
        return None
    return (torch.arange(T, device=lengths.device).unsqueeze(1) < lengths).unsqueeze(-1)


def recurrence_forward(
    xp: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the recurrence over a precomputed input projection (no autograd).

    Args:
        xp: ``[T, B, 4H]`` input projection with both biases added.
        w_hh: ``[4H, P]`` recurrent weight.
        w_hr: ``[P, H]`` projection weight, or None.
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state.
        lengths: ``[B]`` int64 valid lengths (``1 <= len <= T``), or None for all ``T``.
        reverse: run each sequence backwards from its last valid step.

    Returns:
        ``out [T, B, P]`` (dtype of ``xp``, zero past each length), ``h_n [B, P]``,
        ``c_n [B, H]``, and for backward ``gates [T, B, 4H]`` (activations i, f, g, o) and
        ``cs [T, B, H]`` (cell state after each step), both in the accumulation dtype and
        stored at sequence positions.
    """
    T, B, G = xp.shape
    H = G // 4
    acc = acc_dtype(xp.dtype)
    out_dtype = xp.dtype
    xp = xp.to(acc)
    if reverse:
        xp = reverse_within_lengths(xp, lengths)
    w_hh_t = w_hh.to(acc).t()  # [P, 4H]
    w_hr_t = None if w_hr is None else w_hr.to(acc).t()  # [H, P]
    h, c = h0.to(acc), c0.to(acc)
    P = h.shape[1]
    out = xp.new_zeros(T, B, P)
    gates = xp.new_zeros(T, B, G)
    cs = xp.new_zeros(T, B, H)
    masks = _step_masks(lengths, T)
    steps = T if lengths is None else int(lengths.max())
    for t in range(steps):
        a = torch.addmm(xp[t], h, w_hh_t, out=gates[t])  # [B, 4H]
        a[:, : 2 * H].sigmoid_()
        a[:, 2 * H : 3 * H].tanh_()
        a[:, 3 * H :].sigmoid_()
        i, f, g, o = a.chunk(4, 1)
        if masks is None:
            # Write state straight into the saved buffers: no copies in the loop.
            c = torch.addcmul(f * c, i, g, out=cs[t])
            if w_hr_t is None:
                h = torch.mul(o, c.tanh(), out=out[t])
            else:
                h = torch.mm(o * c.tanh(), w_hr_t, out=out[t])
            continue
        c_new = torch.addcmul(f * c, i, g)
        h_new = o * c_new.tanh()
        if w_hr_t is not None:
            h_new = h_new @ w_hr_t
        mask = masks[t]  # [B, 1]
        h, c = torch.where(mask, h_new, h), torch.where(mask, c_new, c)
        torch.mul(h_new, mask, out=out[t])
        cs[t] = c
    if reverse:
        out, gates, cs = (reverse_within_lengths(s, lengths) for s in (out, gates, cs))
    return out.to(out_dtype), h.to(h0.dtype), c.to(c0.dtype), gates, cs


def recurrence_backward(
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
    """Backpropagation through time over the saved ``gates`` and ``cs`` (no autograd).

    Returns ``d_xp [T, B, 4H]`` (gradient of the gate pre-activations, zero past each
    length), ``d_h0 [B, P]``, ``d_c0 [B, H]`` and, with a projection, ``d_hs [T, B, P]``:
    the total gradient reaching each step's projected ``h`` (for ``dW_hr``), else None.
    All in the accumulation dtype.

    Per step, with ``dh`` the gradient reaching ``h_t`` and ``dc`` the one reaching ``c_t``::

        dr = dh W_hr (or dh)          dc += dr * o * (1 - tanh(c_t)^2)
        da_i = dc * g * i(1-i)        da_f = dc * c_{t-1} * f(1-f)
        da_g = dc * i * (1-g^2)       da_o = dr * tanh(c_t) * o(1-o)
        dh_{t-1} = da W_hh + d_out[t-1]        dc_{t-1} = dc * f
    """
    T, B, G = gates.shape
    H = G // 4
    acc = gates.dtype
    d_out = d_out.to(acc)
    if reverse:
        d_out, gates, cs = (reverse_within_lengths(s, lengths) for s in (d_out, gates, cs))
    w_hh = w_hh.to(acc)  # [4H, P]
    w_hr = None if w_hr is None else w_hr.to(acc)  # [P, H]
    masks = _step_masks(lengths, T)  # [T, B, 1]

    # Every factor that does not depend on the incoming gradient, for all steps at once:
    # the loop below is then a handful of small ops per step.
    i, f, g, o = gates.view(T, B, 4, H).unbind(2)  # each [T, B, H]
    tc = cs.tanh()
    c_prev = torch.cat([c0.to(acc).unsqueeze(0), cs[:-1]], 0)
    k_c = o * (1 - tc * tc)  # dc_t += dr * k_c
    k_ifg = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], 2)
    k_o = tc * o * (1 - o)  # [T, B, H]
    if masks is not None:
        # Past its end a sequence's state passes through unchanged (f = 1, no gate
        # gradient, dh carried over), and its constant-zero outputs send no gradient.
        d_out = d_out * masks
        k_c, k_o = k_c * masks, k_o * masks
        k_ifg = k_ifg * masks.unsqueeze(-1)
        f = torch.where(masks, f, 1.0)
        keep = (~masks).to(acc)  # [T, B, 1]

    d_xp = gates.new_zeros(T, B, 4, H)
    d_hs = None if w_hr is None else gates.new_zeros(T, B, d_hn.shape[1])
    steps = T if lengths is None else int(lengths.max())
    dh = d_hn.to(acc) + d_out[steps - 1]
    dc = d_cn.to(acc)
    for t in reversed(range(steps)):
        if d_hs is not None:
            d_hs[t] = dh if masks is None else dh * masks[t]
            dr = dh @ w_hr  # [B, H]
        else:
            dr = dh
        dc = torch.addcmul(dc, dr, k_c[t])
        da = d_xp[t]  # [B, 4, H]
        torch.mul(dc.unsqueeze(1), k_ifg[t], out=da[:, :3])
        torch.mul(dr, k_o[t], out=da[:, 3])
        dh_next = (
            torch.mm(da.view(B, G), w_hh)
            if t == 0
            else torch.addmm(d_out[t - 1], da.view(B, G), w_hh)
        )
        if masks is not None:
            dh_next.addcmul_(keep[t], dh)
        dh, dc = dh_next, dc * f[t]
    d_xp = d_xp.view(T, B, G)
    if reverse:
        d_xp = reverse_within_lengths(d_xp, lengths)
        if d_hs is not None:
            d_hs = reverse_within_lengths(d_hs, lengths)
    return d_xp, dh, dc, d_hs


def direction_forward(
    recurrence, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Input projection as one GEMM, then ``recurrence`` (a ``recurrence_forward``).

    Shared by every backend that implements the recurrence primitives, so the GEMMs around
    the time loop live in one place. Returns ``out, h_n, c_n, gates, cs``.
    """
    xp = torch.matmul(x, w_ih.t())  # [T, B, 4H]
    if b_ih is not None:
        xp = xp + (b_ih + b_hh).to(xp.dtype)
    return recurrence(xp, w_hh, w_hr, h0, c0, lengths, reverse)


def direction_backward(
    recurrence_bwd,
    d_out,
    d_hn,
    d_cn,
    x,
    w_ih,
    w_hh,
    w_hr,
    h0,
    c0,
    lengths,
    out,
    gates,
    cs,
    reverse,
    has_bias,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor | None, Tensor, Tensor]:
    """BPTT with ``recurrence_bwd``, then the weight gradients as single GEMMs.

    Returns ``dx, dw_ih, dw_hh, db (for b_ih and b_hh alike), dw_hr, dh0, dc0``.
    """
    d_xp, d_h0, d_c0, d_hs = recurrence_bwd(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse
    )
    acc = d_xp.dtype
    d_xp2 = d_xp.reshape(-1, d_xp.shape[-1])  # [T*B, 4H]
    dx = torch.matmul(d_xp, w_ih.to(acc)).to(x.dtype)  # [T, B, I]
    dw_ih = (d_xp2.t() @ x.reshape(-1, x.shape[-1]).to(acc)).to(w_ih.dtype)  # [4H, I]
    h_prev = previous_states(out.to(acc), h0, lengths, reverse)  # [T, B, P]
    dw_hh = (d_xp2.t() @ h_prev.reshape(-1, h_prev.shape[-1])).to(w_hh.dtype)  # [4H, P]
    db = d_xp2.sum(0).to(w_ih.dtype) if has_bias else None
    dw_hr = None
    if w_hr is not None:
        H = cs.shape[-1]
        r = gates[..., 3 * H :].to(acc) * cs.to(acc).tanh()  # [T, B, H]
        dw_hr = (d_hs.reshape(-1, d_hs.shape[-1]).t() @ r.reshape(-1, H)).to(w_hr.dtype)
    return dx, dw_ih, dw_hh, db, dw_hr, d_h0.to(h0.dtype), d_c0.to(c0.dtype)


class ReferenceLSTMFunction(torch.autograd.Function):
    """One direction of one layer with hand-written BPTT (see module docstring)."""

    @staticmethod
    def forward(ctx, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse):
        out, h_n, c_n, gates, cs = direction_forward(
            recurrence_forward, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse
        )
        ctx.save_for_backward(x, w_ih, w_hh, w_hr, h0, c0, lengths, out, gates, cs)
        ctx.has_bias = b_ih is not None
        ctx.reverse = reverse
        return out, h_n, c_n

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, d_out, d_hn, d_cn):
        x, w_ih, w_hh, w_hr, h0, c0, lengths, out, gates, cs = ctx.saved_tensors
        dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0 = direction_backward(
            recurrence_backward,
            d_out,
            d_hn,
            d_cn,
            x,
            w_ih,
            w_hh,
            w_hr,
            h0,
            c0,
            lengths,
            out,
            gates,
            cs,
            ctx.reverse,
            ctx.has_bias,
        )
        return dx, dw_ih, dw_hh, db, db, dw_hr, dh0, dc0, None, None


def run_direction(
    x: Tensor,
    w_ih: Tensor,
    w_hh: Tensor,
    b_ih: Tensor | None,
    b_hh: Tensor | None,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer in plain PyTorch (the backend seam; see DESIGN.md).

    Args:
        x: ``[T, B, I]`` padded input.
        w_ih, w_hh: ``[4H, I]`` and ``[4H, P]`` weights; b_ih, b_hh: ``[4H]`` or None.
        w_hr: ``[P, H]`` projection weight, or None.
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state.
        lengths: ``[B]`` int64 valid lengths, or None when every sequence has length ``T``.
        reverse: run each sequence backwards from its own last valid step.

    Returns:
        ``out [T, B, P]`` (zero past each length), ``h_n [B, P]``, ``c_n [B, H]``.
    """
    return ReferenceLSTMFunction.apply(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse)
