"""One direction of one LSTM layer: the autograd glue every recurrence runs under.

A backend hands the driver a :class:`Recurrence`, a pair of functions over the input
projection with the contract of ``fastlstm.backends.reference.recurrence_forward`` /
``recurrence_backward`` (the reference loop, or the Triton kernels). The driver does the rest,
the same way for every pair:

- forward: ``xp = x W_ih^T + (b_ih + b_hh)`` as one GEMM, then the recurrence;
- backward: the backward recurrence, then ``dx``, ``dW_ih``, ``dW_hh`` (against
  :func:`fastlstm.sequences.previous_states`), the bias and ``dW_hr`` gradients.

:class:`DirectionFunction` is the one ``autograd.Function`` around it, and the
``torch.compile`` custom op (``fastlstm.backends.compiled``) calls the same two functions, so
eager and compiled runs agree by construction.

Precision policy (every backend, eager and compiled): the GEMMs take operands in the
compute dtype (the input's, or the autocast dtype) and accumulate in fp32 inside the GEMM;
the recurrence keeps state in :func:`acc_dtype`; the bias sum and the bias gradients are
reduced in :func:`acc_dtype` and rounded once.

It imports only ``fastlstm.sequences``: the backends build on it, and the kernels below it
know nothing of autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from fastlstm.sequences import previous_states

__all__ = [
    "DirectionArgs",
    "DirectionFunction",
    "Recurrence",
    "acc_dtype",
    "direction_backward",
    "direction_forward",
    "run_direction",
]


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """State and accumulation dtype: fp32 for half types; float32/float64 stay as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@dataclass(frozen=True)
class Recurrence:
    """A pair of recurrence functions and what the glue may do with them.

    Attributes:
        name: the backend name, for error messages.
        forward: ``(xp, w_hh, w_hr, h0, c0, lengths, reverse) -> out, h_n, c_n, gates, cs``.
        backward: ``(d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse)
            -> d_xp, d_h0, d_c0, d_hs``.
        differentiable: both functions are made of ordinary PyTorch ops that autograd and
            ``torch.func`` can trace, so the glue supports double backward and ``vmap``.
    """

    name: str
    forward: Callable
    backward: Callable
    differentiable: bool = False


class DirectionArgs(NamedTuple):
    """The inputs of one direction of one layer: the seam every backend serves.

    Checked by the caller (``fastlstm.functional``).
    """

    x: Tensor  # [T, B, I] padded input
    w_ih: Tensor  # [4H, I], gate order i, f, g, o
    w_hh: Tensor  # [4H, P]
    b_ih: Tensor | None  # [4H]
    b_hh: Tensor | None  # [4H]
    w_hr: Tensor | None  # [P, H] projection (P = proj_size), or None (P = H)
    h0: Tensor  # [B, P]
    c0: Tensor  # [B, H]
    lengths: Tensor | None  # [B] int64 in [1, T] on x.device; None: every sequence is T long
    reverse: bool  # run each sequence backwards from its own last valid step

    @property
    def tensors(self) -> tuple[Tensor | None, ...]:
        """The eight floating inputs, in the order their gradients are returned."""
        return self[:8]


def _input_projection(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None):
    T, B, I = x.shape
    G = w_ih.shape[0]
    x2 = x.reshape(T * B, I)  # [T*B, I]
    biases = [b for b in (b_ih, b_hh) if b is not None]
    if not biases:
        return torch.mm(x2, w_ih.t()).view(T, B, G)  # [T, B, 4H]
    acc = acc_dtype(x.dtype)
    bias = sum(b.to(acc) for b in biases).to(x.dtype)  # [4H], rounded once
    return torch.addmm(bias, x2, w_ih.t()).view(T, B, G)  # [T, B, 4H]


def direction_forward(
    rec: Recurrence, a: DirectionArgs
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Input projection as one GEMM, then ``rec.forward``: ``out, h_n, c_n, gates, cs``."""
    xp = _input_projection(a.x, a.w_ih, a.b_ih, a.b_hh)
    return rec.forward(xp, a.w_hh, a.w_hr, a.h0, a.c0, a.lengths, a.reverse)


def direction_backward(
    rec: Recurrence,
    a: DirectionArgs,
    grads: tuple[Tensor, Tensor, Tensor],
    saved: tuple[Tensor, Tensor, Tensor],
    needs: tuple[bool, ...] = (True,) * 8,
) -> tuple[Tensor | None, ...]:
    """The backward recurrence, then the gradient GEMMs for the inputs in ``needs``.

    ``grads`` are the cotangents ``d_out, d_hn, d_cn``; ``saved`` the forward's
    ``out, gates, cs``. ``needs`` flags ``x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0``; returns
    their gradients in that order (None where not needed or where the input is None).
    """
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse = a
    out, gates, cs = saved
    d_xp, d_h0, d_c0, d_hs = rec.backward(*grads, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    T, B, G = d_xp.shape
    I, P, H = x.shape[-1], w_hh.shape[1], cs.shape[-1]
    cdt = x.dtype
    g = d_xp.to(cdt).reshape(T * B, G)  # [T*B, 4H] GEMM operand, rounded once
    dx = dw_ih = dw_hh = db_ih = db_hh = dw_hr = dh0 = dc0 = None
    if needs[0]:
        dx = torch.mm(g, w_ih).view(T, B, I)  # [T, B, I]
    if needs[1]:
        dw_ih = torch.mm(g.t(), x.reshape(T * B, I))  # [4H, I]
    if needs[2]:
        h_prev = previous_states(out, h0, lengths, reverse)  # [T, B, P]
        dw_hh = torch.mm(g.t(), h_prev.reshape(T * B, P))  # [4H, P]
    if (needs[3] and b_ih is not None) or (needs[4] and b_hh is not None):
        db = d_xp.sum((0, 1))  # [4H] in the accumulation dtype
        db_ih = db.to(b_ih.dtype) if needs[3] and b_ih is not None else None
        db_hh = db.to(b_hh.dtype) if needs[4] and b_hh is not None else None
    if needs[5] and w_hr is not None:
        r = gates[..., 3 * H :] * torch.tanh(cs)  # [T, B, H] = o * tanh(c)
        dw_hr = torch.mm(d_hs.to(cdt).reshape(T * B, P).t(), r.to(cdt).reshape(T * B, H))
    if needs[6]:
        dh0 = d_h0.to(h0.dtype)
    if needs[7]:
        dc0 = d_c0.to(c0.dtype)
    return dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0


class DirectionFunction(torch.autograd.Function):
    """One direction of one layer over a :class:`Recurrence` (see the module docstring).

    Returns ``out, h_n, c_n`` and the saved ``gates, cs`` (not differentiable). Backward
    under ``create_graph=True`` (double backward, ``torch.func.grad``) recomputes the forward
    with the recurrence's own differentiable ops, so the gradient it returns is itself a
    differentiable function of the inputs; a recurrence that is not differentiable (the
    Triton kernels) refuses with an error that names the backend that can.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(*args):
        *inputs, rec = args  # the ten DirectionArgs fields, then the Recurrence
        return direction_forward(rec, DirectionArgs(*inputs))

    @staticmethod
    def setup_context(ctx, inputs, output):
        *fields, rec = inputs
        a = DirectionArgs(*fields)
        out, _, _, gates, cs = output
        ctx.mark_non_differentiable(gates, cs)
        ctx.save_for_backward(*a.tensors, a.lengths, out, gates, cs)
        ctx.reverse, ctx.rec = a.reverse, rec

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn, _d_gates, _d_cs):
        *tensors, lengths, out, gates, cs = ctx.saved_tensors
        a = DirectionArgs(*tensors, lengths, ctx.reverse)
        rec = ctx.rec
        if torch.is_grad_enabled():
            if not rec.differentiable:
                raise RuntimeError(
                    f"backend {rec.name!r} does not support double backward or torch.func "
                    "transforms (its backward runs in fused kernels, create_graph=True "
                    "cannot differentiate it); use backend='reference' (any device) or "
                    "backend='aten' on the CPU"
                )
            # Recompute with graph: the first derivative then carries its own graph.
            out, _, _, gates, cs = direction_forward(rec, a)
        needs = tuple(ctx.needs_input_grad[:8])
        grads = direction_backward(rec, a, (d_out, d_hn, d_cn), (out, gates, cs), needs)
        return (*grads, None, None, None)


def _functorch_wrapped(tensors) -> bool:
    is_wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return any(t is not None and is_wrapped(t) for t in tensors)


def autocast_inputs(tensors: tuple[Tensor | None, ...], device_type: str):
    """Cast floating inputs to the autocast dtype when autocast is on (as nn.LSTM's op is)."""
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(None if t is None else t.to(dtype) for t in tensors)


def run_direction(rec: Recurrence, a: DirectionArgs) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer over ``rec`` (differentiable); ``out, h_n, c_n``.

    Under ``torch.autocast`` the floating inputs run in the autocast dtype.
    """
    tensors = autocast_inputs(a.tensors, a.x.device.type)
    if not rec.differentiable and _functorch_wrapped(tensors):
        raise RuntimeError(
            f"backend {rec.name!r} does not support torch.func transforms (vmap, grad, ...); "
            "use backend='reference' (any device) or backend='aten' on the CPU"
        )
    with torch.autocast(a.x.device.type, enabled=False):
        out, h_n, c_n, _, _ = DirectionFunction.apply(*tensors, a.lengths, bool(a.reverse), rec)
    return out, h_n, c_n
