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

import itertools

import torch
from torch import Tensor

from fastlstm.direction import DirectionArgs
from fastlstm.sequences import reverse_index

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


def _lstm(x: Tensor, h0: Tensor, c0: Tensor, params: list[Tensor], has_biases: bool):
    out, h_n, c_n = torch._VF.lstm(
        x, (h0.unsqueeze(0), c0.unsqueeze(0)), params, has_biases, 1, 0.0, False, False, False
    )
    return out, h_n[0], c_n[0]


def _segment_cuts(sorted_lengths: list[int], max_segments: int) -> list[int]:
    """Time points where the run drops finished sequences: ``0 = c_0 < ... < c_K = max``.

    Each segment runs only the sequences still going at its start, so compute spent on
    padding stays below about ``1 / K`` of the padded total, while each fused call keeps a
    batch large enough to be efficient.
    """
    B = len(sorted_lengths)
    cuts = {0, sorted_lengths[0]}
    for k in range(1, max_segments):
        cuts.add(sorted_lengths[B - 1 - (k * B) // max_segments])
    return sorted(cuts)


def run_direction(
    a: DirectionArgs, lengths_host: list[int] | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one LSTM layer with the fused aten op (the backend seam).

    Same contract as :func:`fastlstm.direction.run_direction`. The segmenting needs
    the lengths on the host: ``lengths_host`` (the values of ``lengths`` as a list, which
    ``fastlstm.functional`` reads once per call) spares a device-to-host copy per direction.
    """
    x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse = a
    params = [w_ih, w_hh]
    if b_ih is not None:
        params += [b_ih, b_hh]
    if w_hr is not None:
        params.append(w_hr)
    if lengths is None:
        out, h_n, c_n = _lstm(x.flip(0) if reverse else x, h0, c0, params, b_ih is not None)
        return (out.flip(0) if reverse else out), h_n, c_n

    T, B, _ = x.shape
    H = w_hh.shape[0] // 4
    # Run in a frame sorted by length (longest first) and, for the reverse direction,
    # reversed within each length: one gather in, one scatter out.
    order = torch.argsort(lengths, descending=True, stable=True)  # [B]
    sorted_lengths = lengths[order]  # [B]
    if reverse:
        t_idx = reverse_index(sorted_lengths, T)  # [T, B]
    else:
        t_idx = torch.arange(T, device=x.device).unsqueeze(1).expand(T, B)
    past_end = torch.arange(T, device=x.device).unsqueeze(1) >= sorted_lengths  # [T, B]
    x_run = torch.cat([x[t_idx, order], past_end.unsqueeze(-1).to(x.dtype)], -1)  # [T, B, I+1]
    params[0] = torch.cat([w_ih, _freeze_column(H, w_ih)], 1)  # [4H, I + 1]

    if lengths_host is None:
        lengths_host = lengths.tolist()
    # The same values the device sort gives (a stable sort of equal keys only permutes rows).
    lengths_host = sorted(lengths_host, reverse=True)
    cuts = _segment_cuts(lengths_host, max_segments=max(1, min(8, B // 8)))
    h, c = h0[order], c0[order]
    outs, c_done = [], []
    for start, stop in itertools.pairwise(cuts):
        n = sum(1 for n_steps in lengths_host if n_steps > start)  # the still-running prefix
        out_seg, h, c = _lstm(x_run[start:stop, :n], h[:n], c[:n], params, b_ih is not None)
        outs.append(
            torch.cat([out_seg, out_seg.new_zeros(stop - start, B - n, out_seg.shape[-1])], 1)
        )
        n_next = sum(1 for n_steps in lengths_host if n_steps > stop)
        c_done.append(c[n_next:])
    if cuts[-1] < T:
        outs.append(outs[0].new_zeros(T - cuts[-1], B, outs[0].shape[-1]))
    out_run = torch.cat(outs, 0)  # [T, B, P], sorted frame
    c_sorted = torch.cat(c_done[::-1], 0)  # [B, H]
    h_sorted = out_run[sorted_lengths - 1, torch.arange(B, device=x.device)]  # [B, P]

    out = out_run.new_zeros(out_run.shape).index_put((t_idx, order), out_run)
    unsort = torch.argsort(order)
    return out, h_sorted[unsort], c_sorted[unsort]


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
