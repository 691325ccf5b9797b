"""ONNX export of :class:`fastlstm.LSTM`: graphs made of ONNX's own ``LSTM`` operator.

Under ``torch.onnx.export`` (``torch.onnx.is_in_onnx_export()``), :func:`fastlstm.lstm` runs
:func:`export_lstm` instead of a backend, whatever ``backend=`` says: the exported graph runs
in the ONNX runtime, not on a fastlstm backend. Each layer becomes one ONNX ``LSTM`` node
(both directions in one node, as ``nn.LSTM`` exports); with ``lengths`` its
``sequence_lens`` input carries them, and ONNX's semantics are those of a packed sequence:
outputs zero past each length, ``Y_h``/``Y_c`` at each sequence's last valid step, the
reverse direction starting there. Nothing needs to be passed to the exporter:

- legacy exporter (``dynamo=False``, ``torch.jit.trace`` underneath): without lengths, the
  aten ``lstm`` op that ``nn.LSTM`` runs, which it translates itself (the graph ``nn.LSTM``
  exports); with lengths, the custom op ``fastlstm::onnx_lstm``, whose ONNX symbolic this
  module registers on first use;
- dynamo exporter (``dynamo=True``, ``torch.export`` underneath): ``LSTM`` nodes made with
  ``torch.onnx.ops.symbolic_multi_out``, with or without lengths (``torch.export`` would
  unroll the aten op over time and fix ``T``, so ``nn.LSTM`` itself exports no dynamic ``T``
  there).

ONNX's ``LSTM`` has no projection: ``proj_size > 0`` raises (``nn.LSTM``'s export fails too).
Lengths cannot be checked inside an ONNX graph (ONNX has no assertion); ONNX Runtime rejects a
length above ``T`` itself, and a length of 0 gives zeros and the initial state.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from fastlstm import direction
from fastlstm.backends import reference

__all__ = ["export_lstm", "onnx_gates"]


def onnx_gates(w: Tensor, hidden: int) -> Tensor:
    """Reorder gate blocks along dim 0: PyTorch's ``i, f, g, o`` to ONNX's ``i, o, f, c``."""
    i, f, g, o = w.split(hidden, 0)
    return torch.cat([i, o, f, g], 0)


def _torch_gates(w: Tensor, hidden: int) -> Tensor:
    """The inverse of :func:`onnx_gates`."""
    i, o, f, g = w.split(hidden, 0)
    return torch.cat([i, f, g, o], 0)


@torch.library.custom_op("fastlstm::onnx_lstm", mutates_args=())
def _onnx_lstm_op(
    x: Tensor,
    W: Tensor,
    R: Tensor,
    B: Tensor,
    seq_lens: Tensor,
    h0: Tensor,
    c0: Tensor,
    hidden: int,
    bidirectional: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX ``LSTM`` (inputs in ONNX's layout) for the legacy exporter: ``Y, Y_h, Y_c``.

    The legacy exporter traces with ``torch.jit.trace``, which records a custom op as one node,
    and translates the node with :func:`_legacy_symbolic`. This body computes the node's
    values with the reference recurrence, so that the traced run sees real outputs.
    """
    ys, hs, cs = [], [], []
    lengths = seq_lens.to(torch.int64)
    for d in range(2 if bidirectional else 1):
        b_ih, b_hh = B[d].split(4 * hidden)
        w_ih, w_hh = _torch_gates(W[d], hidden), _torch_gates(R[d], hidden)
        b_ih, b_hh = _torch_gates(b_ih, hidden), _torch_gates(b_hh, hidden)
        a = direction.DirectionArgs(x, w_ih, w_hh, b_ih, b_hh, None, h0[d], c0[d], lengths, d == 1)
        out, h_n, c_n, _, _ = direction.direction_forward(reference.RECURRENCE, a)
        ys.append(out)
        hs.append(h_n)
        cs.append(c_n)
    return torch.stack(ys, 1), torch.stack(hs), torch.stack(cs)


@_onnx_lstm_op.register_fake
def _(x, W, R, B, seq_lens, h0, c0, hidden, bidirectional):
    T, batch, _ = x.shape
    D = 2 if bidirectional else 1
    return x.new_empty(T, D, batch, hidden), h0.new_empty(h0.shape), c0.new_empty(c0.shape)


_DIRECTIONS = {False: "forward", True: "bidirectional"}


def _legacy_symbolic(g, x, W, R, B, seq_lens, h0, c0, hidden, bidirectional):
    from torch.onnx import symbolic_helper

    return g.op(
        "LSTM",
        x,
        W,
        R,
        B,
        seq_lens,
        h0,
        c0,
        hidden_size_i=symbolic_helper._parse_arg(hidden, "i"),
        direction_s="bidirectional"
        if symbolic_helper._parse_arg(bidirectional, "b")
        else "forward",
        outputs=3,
    )


@functools.cache
def _register_legacy_symbolic() -> None:
    # Opset 9 and every later one: the LSTM operator and the attributes used are that old.
    torch.onnx.register_custom_op_symbolic("fastlstm::onnx_lstm", _legacy_symbolic, 9)


def _lstm_node(
    x: Tensor, W: Tensor, R: Tensor, B: Tensor, seq_lens: Tensor | None, h0: Tensor, c0: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """ONNX ``LSTM(X, W, R, B, sequence_lens, initial_h, initial_c) -> Y, Y_h, Y_c``."""
    T, batch, _ = x.shape
    D, hidden = W.shape[0], R.shape[2]
    direction_name = "bidirectional" if D == 2 else "forward"
    if torch.jit.is_tracing():  # the legacy exporter traces with torch.jit
        _register_legacy_symbolic()
        return _onnx_lstm_op(x, W, R, B, seq_lens, h0, c0, hidden, D == 2)
    symbolic = getattr(getattr(torch.onnx, "ops", None), "symbolic_multi_out", None)
    if symbolic is None:
        raise RuntimeError(
            "exporting fastlstm.LSTM with lengths= through the dynamo exporter needs "
            f"torch.onnx.ops.symbolic_multi_out (torch >= 2.8; this is {torch.__version__}); "
            "export with dynamo=False instead"
        )
    Y, Y_h, Y_c = symbolic(
        "LSTM",
        [x, W, R, B, seq_lens, h0, c0],
        {"hidden_size": hidden, "direction": direction_name},
        dtypes=[x.dtype] * 3,
        shapes=[[T, D, batch, hidden], [D, batch, hidden], [D, batch, hidden]],
    )
    return Y, Y_h, Y_c


def export_lstm(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    weights: Sequence[Tensor],
    *,
    per: int,
    num_layers: int,
    num_directions: int,
    dropout: float,
    training: bool,
    lengths: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The whole LSTM on padded ``x [T, B, I]`` as ONNX ``LSTM`` nodes.

    ``weights`` are in ``nn.LSTM._flat_weights`` order, ``per`` tensors per layer and
    direction. Returns ``out [T, B, D*H]``, ``h_n`` and ``c_n`` ``[L*D, B, H]``.
    """
    if per in (3, 5):
        raise RuntimeError(
            "fastlstm.LSTM with proj_size > 0 cannot be exported to ONNX: ONNX's LSTM operator "
            "has no projection (nn.LSTM's export fails the same way)"
        )
    D = num_directions
    has_biases = per == 4
    if lengths is None and torch.jit.is_tracing():
        # The legacy exporter: exactly the call nn.LSTM makes, which it translates into one
        # ONNX LSTM node per layer. (torch.export, under the dynamo exporter, unrolls this op
        # over time and fixes T: there the nodes below are emitted instead.)
        out, h_n, c_n = torch._VF.lstm(
            x, hx, list(weights), has_biases, num_layers, dropout, training, D == 2, False
        )
        return out, h_n, c_n
    T, batch, _ = x.shape
    H = weights[1].shape[1]
    # ONNX's sequence_lens is int32; absent, every sequence runs all T steps.
    seq_lens = None if lengths is None else lengths.to(torch.int32)
    h0, c0 = hx
    layer_in = x
    h_ns, c_ns = [], []
    for layer in range(num_layers):
        Ws, Rs, Bs = [], [], []
        for d in range(D):
            w = weights[(layer * D + d) * per : (layer * D + d + 1) * per]
            Ws.append(onnx_gates(w[0], H))
            Rs.append(onnx_gates(w[1], H))
            # ONNX's B is [Wb, Rb]: both biases, each in ONNX gate order.
            biases = (w[2], w[3]) if has_biases else (w[0].new_zeros(4 * H),) * 2
            Bs.append(torch.cat([onnx_gates(b, H) for b in biases]))
        rows = slice(layer * D, (layer + 1) * D)
        Y, Y_h, Y_c = _lstm_node(
            layer_in,
            torch.stack(Ws),
            torch.stack(Rs),
            torch.stack(Bs),
            seq_lens,
            h0[rows],
            c0[rows],
        )
        layer_in = Y.permute(0, 2, 1, 3).reshape(T, batch, D * H)  # [T, D, B, H] -> [T, B, D*H]
        if dropout > 0 and training and layer < num_layers - 1:
            layer_in = F.dropout(layer_in, dropout, training=True)
        h_ns.append(Y_h)
        c_ns.append(Y_c)
    return layer_in, torch.cat(h_ns), torch.cat(c_ns)
