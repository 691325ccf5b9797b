"""Reference backend: the LSTM recurrence in plain PyTorch, with hand-written BPTT.

This is the oracle every other backend is tested against, and the fallback that runs on any
device and dtype. It is written for clarity first, but it is not naive about cost:

- the input projection ``x @ W_ih^T + b`` for all timesteps is one GEMM before the loop;
- the time loop does only the recurrent matmul, the gate nonlinearities and the cell update;
- backward is backpropagation through time written by hand (reverse loop over the saved gate
  activations and cell states), and the weight gradients are single GEMMs after the loop
  (in ``fastlstm.direction``, the glue every backend shares), instead of autograd recording a
  graph of ~10 nodes per timestep.

Both recurrence functions use only ordinary differentiable PyTorch ops (no ``out=``, no
in-place writes, no reads of tensor values on the host), so the glue can record a graph of
the backward itself: double backward and ``torch.func`` transforms (``vmap``, ``grad``) work.

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

from fastlstm import direction
from fastlstm.direction import acc_dtype
from fastlstm.sequences import reverse_within_lengths

__all__ = ["RECURRENCE", "acc_dtype", "recurrence_backward", "recurrence_forward"]


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
    """Run the recurrence over a precomputed input projection.

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
    T, _, G = xp.shape
    H = G // 4
    acc = acc_dtype(xp.dtype)
    out_dtype = xp.dtype
    xp = xp.to(acc)
    if reverse:
        xp = reverse_within_lengths(xp, lengths)
    w_hh_t = w_hh.to(acc).t()  # [P, 4H]
    w_hr_t = None if w_hr is None else w_hr.to(acc).t()  # [H, P]
    h, c = h0.to(acc), c0.to(acc)
    masks = _step_masks(lengths, T)
    outs, gates, cs = [], [], []
    for t in range(T):
        a = torch.addmm(xp[t], h, w_hh_t)  # [B, 4H]
        i, f = torch.sigmoid(a[:, :H]), torch.sigmoid(a[:, H : 2 * H])
        g, o = torch.tanh(a[:, 2 * H : 3 * H]), torch.sigmoid(a[:, 3 * H :])
        c_new = f * c + i * g  # [B, H]
        h_new = o * torch.tanh(c_new)
        if w_hr_t is not None:
            h_new = h_new @ w_hr_t  # [B, P]
        if masks is None:
            h, c = h_new, c_new
            outs.append(h_new)
        else:
            mask = masks[t]  # [B, 1]
            h, c = torch.where(mask, h_new, h), torch.where(mask, c_new, c)
            outs.append(h_new * mask)
        gates.append(torch.cat([i, f, g, o], 1))
        cs.append(c)
    out, gates, cs = torch.stack(outs), torch.stack(gates), torch.stack(cs)
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
    """Backpropagation through time over the saved ``gates`` and ``cs``.

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
    i, f, g, o = gates.reshape(T, B, 4, H).unbind(2)  # each [T, B, H]
    tc = torch.tanh(cs)
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

    d_xp: list[Tensor] = [None] * T  # type: ignore[list-item]
    d_hs: list[Tensor] = [None] * T  # type: ignore[list-item]
    dh = d_hn.to(acc) + d_out[T - 1]
    dc = d_cn.to(acc)
    for t in reversed(range(T)):
        if w_hr is not None:
            d_hs[t] = dh if masks is None else dh * masks[t]
            dr = dh @ w_hr  # [B, H]
        else:
            dr = dh
        dc = dc + dr * k_c[t]
        da = torch.cat([(dc.unsqueeze(1) * k_ifg[t]).reshape(B, 3 * H), dr * k_o[t]], 1)
        d_xp[t] = da  # [B, 4H]
        dh_next = da @ w_hh  # [B, P]
        if t > 0:
            dh_next = dh_next + d_out[t - 1]
        if masks is not None:
            dh_next = dh_next + keep[t] * dh
        dh, dc = dh_next, dc * f[t]
    d_xp_all = torch.stack(d_xp)  # [T, B, 4H]
    d_hs_all = None if w_hr is None else torch.stack(d_hs)  # [T, B, P]
    if reverse:
        d_xp_all = reverse_within_lengths(d_xp_all, lengths)
        if d_hs_all is not None:
            d_hs_all = reverse_within_lengths(d_hs_all, lengths)
    return d_xp_all, dh, dc, d_hs_all


RECURRENCE = direction.Recurrence(
    "reference", recurrence_forward, recurrence_backward, differentiable=True
)
