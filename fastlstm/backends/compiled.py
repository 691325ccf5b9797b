"""One LSTM direction as a ``torch.library`` custom op, for traced graphs.

``torch.compile`` refuses to trace ``nn.LSTM`` and would unroll a Python time loop step by
step. Registering the direction as an opaque custom op (with a fake implementation for
shape propagation and a registered autograd formula) lets ``torch.compile(model,
fullgraph=True)``, ``torch.export`` and ``torch.jit.trace`` record a model holding
:class:`fastlstm.LSTM` as one node per direction. The op's forward and backward are the
shared glue of :mod:`fastlstm.direction` over the named backend's recurrence pair, the very
functions eager mode runs, so traced and eager runs of a backend agree by construction. Only
backends with a recurrence pair can run here (the fused aten op exposes no saved state);
``select_backend`` knows that. ``designs`` (comma-separated, or empty) and ``pinned`` carry
the Triton kernel designs the call may use (``fastlstm.backends.recurrence``).

A traced module saved with ``torch.jit.save`` and a program saved with ``torch.export.save``
name this op: they load after ``import fastlstm``, which registers it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastlstm import direction
from fastlstm.backends import recurrence

__all__ = ["lstm_direction_backward_op", "lstm_direction_op", "run_direction"]


def _recurrence(backend: str, designs: str, pinned: bool) -> direction.Recurrence:
    return recurrence(backend, tuple(designs.split(",")) if designs else None, pinned)


@torch.library.custom_op("fastlstm::lstm_direction", mutates_args=())
def lstm_direction_op(
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
    backend: str,
    designs: str,
    pinned: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``DirectionArgs``' fields, then the recurrence. Returns ``out, h_n, c_n`` and the
    saved ``gates, cs`` that backward needs."""
    a = direction.DirectionArgs(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse)
    out, h_n, c_n, gates, cs = direction.direction_forward(_recurrence(backend, designs, pinned), a)
    # A custom op may not return views of its inputs or of each other.
    return out, h_n.clone(), c_n.clone(), gates, cs


@lstm_direction_op.register_fake
def _(*args):
    a = direction.DirectionArgs(*args[:10])
    T, B, _ = a.x.shape
    G, P = a.w_hh.shape
    acc = direction.acc_dtype(a.x.dtype)
    return (
        a.x.new_empty(T, B, P),
        a.h0.new_empty(B, P),
        a.c0.new_empty(B, G // 4),
        a.x.new_empty(T, B, G, dtype=acc),
        a.x.new_empty(T, B, G // 4, dtype=acc),
    )


@torch.library.custom_op("fastlstm::lstm_direction_backward", mutates_args=())
def lstm_direction_backward_op(
    grads: list[Tensor],
    inputs: list[Tensor | None],
    saved: list[Tensor],
    reverse: bool,
    backend: str,
    designs: str,
    pinned: bool,
) -> list[Tensor]:
    """``grads``: ``d_out, d_hn, d_cn``; ``inputs``: the eight tensors and ``lengths`` of
    ``DirectionArgs``; ``saved``: ``out, gates, cs``. Returns ``dx, dw_ih, dw_hh, db, dw_hr,
    dh0, dc0``; absent ``db``/``dw_hr`` are empty."""
    a = direction.DirectionArgs(*inputs, reverse)
    rec = _recurrence(backend, designs, pinned)
    dx, dw_ih, dw_hh, db, _, dw_hr, dh0, dc0 = direction.direction_backward(
        rec, a, tuple(grads), tuple(saved)
    )
    empty = a.w_ih.new_empty(0)
    return [dx, dw_ih, dw_hh, empty if db is None else db, empty if dw_hr is None else dw_hr,
            dh0, dc0]  # fmt: skip


@lstm_direction_backward_op.register_fake
def _(grads, inputs, saved, reverse, backend, designs, pinned):
    a = direction.DirectionArgs(*inputs, reverse)
    grads = [torch.empty_like(t) for t in (a.x, a.w_ih, a.w_hh, a.h0, a.c0)]
    dx, dw_ih, dw_hh, dh0, dc0 = grads
    db = a.w_ih.new_empty(0) if a.b_ih is None else torch.empty_like(a.b_ih)
    dw_hr = a.w_ih.new_empty(0) if a.w_hr is None else torch.empty_like(a.w_hr)
    return [dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0]


def _setup_context(ctx, inputs, output) -> None:
    *fields, backend, designs, pinned = inputs
    a = direction.DirectionArgs(*fields)
    out, _, _, gates, cs = output
    ctx.save_for_backward(*a.tensors, a.lengths, out, gates, cs)
    ctx.reverse, ctx.recurrence = a.reverse, (backend, designs, pinned)


def _backward(ctx, d_out, d_hn, d_cn, _d_gates, _d_cs):
    *inputs, out, gates, cs = ctx.saved_tensors
    a = direction.DirectionArgs(*inputs, ctx.reverse)
    # An output that did not reach the loss has no cotangent; the recurrence needs zeros.
    d_out = torch.zeros_like(out) if d_out is None else d_out
    d_hn = torch.zeros_like(a.h0) if d_hn is None else d_hn
    d_cn = torch.zeros_like(a.c0) if d_cn is None else d_cn
    dx, dw_ih, dw_hh, db, dw_hr, dh0, dc0 = lstm_direction_backward_op(
        [d_out, d_hn, d_cn], list(inputs), [out, gates, cs], ctx.reverse, *ctx.recurrence
    )
    db_ih = None if a.b_ih is None else db
    db_hh = None if a.b_hh is None else db
    dw_hr = None if a.w_hr is None else dw_hr
    return dx, dw_ih, dw_hh, db_ih, db_hh, dw_hr, dh0, dc0, None, None, None, None, None


lstm_direction_op.register_autograd(_backward, setup_context=_setup_context)


def run_direction(
    a: direction.DirectionArgs,
    backend: str = "reference",
    designs: tuple[str, ...] | None = None,
    pinned: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction through the custom op, for a backend with a recurrence pair."""
    tensors = direction.autocast_inputs(a.tensors, a.x.device.type)
    spec = ",".join(designs or ())
    with torch.autocast(a.x.device.type, enabled=False):
        out, h_n, c_n, _, _ = lstm_direction_op(
            *tensors, a.lengths, a.reverse, backend, spec, pinned
        )
    return out, h_n, c_n
