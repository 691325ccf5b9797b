"""Time-axis helpers for padded batches of variable-length sequences.

Shared by the backends and the kernels' autograd glue, so that the conventions (reversal
within each length, the state each step starts from) live in one place. Pure PyTorch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["previous_states", "reverse_index", "reverse_within_lengths"]


def reverse_index(lengths: Tensor, T: int) -> Tensor:
    """Index ``[T, B]`` that reverses each sequence within its length and leaves padding.

    Applying it twice is the identity, so the same index reverses results back.
    """
    t = torch.arange(T, device=lengths.device).unsqueeze(1)  # [T, 1]
    lengths = lengths.unsqueeze(0)  # [1, B]
    return torch.where(t < lengths, lengths - 1 - t, t)  # [T, B]


def reverse_within_lengths(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse ``seq [T, B, ...]`` in time, each sequence within its own length."""
    if lengths is None:
        return seq.flip(0)
    index = reverse_index(lengths, seq.shape[0])  # [T, B]
    index = index.view(*index.shape, *([1] * (seq.dim() - 2))).expand_as(seq)
    return seq.gather(0, index)


def previous_states(out: Tensor, h0: Tensor, lengths: Tensor | None, reverse: bool) -> Tensor:
    """``h_{t-1}`` for every position ``[T, B, P]``: the state each step multiplied by W_hh.

    Positions past a sequence's end get zeros or stale values; their gate gradients are
    zero, so they contribute nothing to ``dW_hh``. Out-of-place (no index writes), so that
    autograd and ``torch.func`` can trace it.
    """
    h0 = h0.to(out.dtype).unsqueeze(0)  # [1, B, P]
    if not reverse:
        return torch.cat([h0, out[:-1]], 0)
    T = out.shape[0]
    prev = torch.cat([out[1:], torch.zeros_like(h0)], 0)  # [T, B, P]
    # The first step of a reversed sequence is its last valid position.
    t = torch.arange(T, device=out.device).unsqueeze(1)  # [T, 1]
    first = t == (T - 1 if lengths is None else lengths.unsqueeze(0) - 1)  # [T, B] or [T, 1]
    return torch.where(first.unsqueeze(-1), h0, prev)
