"""Aten backend: the fused LSTM that ``torch.nn.LSTM`` itself runs (cuDNN on GPU, aten/oneDNN
on CPU), driven without ``nn.LSTM``'s packed path.

Variable lengths on padded input. The fused op runs every sequence for all ``T`` steps, so
we freeze each finished sequence from the inside: one extra input feature is 1 past a
sequence's end and 0 before it, and its column of ``W_ih`` adds ``-BIG`` to the input and
output gates and ``+BIG`` to the forget gate. Past the end this makes ``i = 0``, ``f = 1``
and ``o = 0`` exactly (sigmoid saturates to 0 and 1 in every float format), so

    c_t = 1 * c_{t-1} + 0 * g = c_{t-1}       (the final ``c_n`` is the last valid cell state)
    h_t = 0 * tanh(c_t) = 0                   (padded outputs are zero, as nn.LSTM's)

and every derivative through a saturated sigmoid is exactly zero, so gradients equal those
of the packed computation. ``h_n`` is gathered from the output at each last valid step. The
backward direction reverses each sequence within its length (one gather) and runs forward.
This is much faster than the packed path, which the CPU runs one timestep at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fastlstm.backends.reference import reverse_within_lengths

__all__ = ["run_direction", "run_stack"]

# Large enough that sigmoid(-BIG) == 0 and sigmoid(BIG) == 1 exactly in fp16/bf16/fp32/fp64,
# small enough that adding it to realistic pre-activations never overflows fp16 (max 65504).
_BIG = 1.0e4


def _freeze_column(H: int, like: Tensor) -> Tensor:
    """The extra ``W_ih`` column ``[4H, 1]`` that freezes a sequence past its end."""
    col = like.new_zeros(4, H)
    col[0] = -_BIG  # input gate closed: nothing written
    col[1] = _BIG  # forget gate open: cell kept exactly
    col[3] = -_BIG  # output gate closed: h and the padded output are zero
    return col.reshape(4 * H, 1)


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
    """One direction of one LSTM layer with the fused aten op (the backend seam).

    Same contract as :func:`fastlstm.backends.reference.run_direction`.
    """
    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    if reverse:
        x = reverse_within_lengths(x, lengths)
    if lengths is not None:
        past_end = torch.arange(T, device=x.device).unsqueeze(1) >= lengths  # [T, B]
        x = torch.cat([x, past_end.unsqueeze(-1).to(x.dtype)], -1)  # [T, B, I + 1]
        w_ih = torch.cat([w_ih, _freeze_column(H, w_ih)], 1)  # [4H, I + 1]
    params = [w_ih, w_hh]
    if b_ih is not None:
        params += [b_ih, b_hh]
    if w_hr is not None:
        params.append(w_hr)
    out, h_n, c_n = torch._VF.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), params, b_ih is not None, 1, 0.0, False, False, False
    )
    h_n, c_n = h_n[0], c_n[0]
    if lengths is not None:
        h_n = out[lengths - 1, torch.arange(B, device=x.device)]  # [B, P]
    if reverse:
        out = reverse_within_lengths(out, lengths)
    return out, h_n, c_n


def run_stack(
    x: Tensor,
    hx: tuple[Tensor, Tensor],
    flat_weights: list[Tensor],
    has_biases: bool,
    num_layers: int,
    dropout: float,
    training: bool,
    bidirectional: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """All layers and directions in one fused call, for padded input without lengths.

    ``x`` is ``[T, B, I]``; ``hx`` holds ``[L*D, B, P]`` and ``[L*D, B, H]``; ``flat_weights``
    is in ``nn.LSTM._flat_weights`` order. Returns ``out [T, B, D*P]``, ``h_n``, ``c_n``.
    """
    return torch._VF.lstm(
        x, hx, flat_weights, has_biases, num_layers, dropout, training, bidirectional, False
    )
