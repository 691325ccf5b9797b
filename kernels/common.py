"""What the kernel files share: ``@triton.jit`` helpers and the buffers launchers allocate."""

from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = [
    "BackwardArgs",
    "ForwardArgs",
    "empty",
    "optional_inputs",
    "positions",
    "sigmoid",
    "tanh",
    "tile_lengths",
]

# Optional inputs are passed as None pointers; these constexprs switch their code in or out,
# so one kernel serves every case without stand-in tensors.
optional_inputs = triton.heuristics(
    {
        "HAS_LENGTHS": lambda args: args["lengths"] is not None,
        "HAS_PROJ": lambda args: args["w_hr"] is not None,
    }
)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # Via sigmoid: libdevice tanh is unavailable in the interpreter; exact in fp32 to ~1 ulp.
    return 2.0 * sigmoid(2.0 * x) - 1.0


@triton.jit
def tile_lengths(lengths, o_b, m_b, T, HAS_LENGTHS: tl.constexpr):
    """[BB] int64 valid length of each row of the tile; 0 for rows past the batch."""
    if HAS_LENGTHS:
        b_len = tl.load(lengths + o_b, mask=m_b, other=0).to(tl.int64)
    else:
        b_len = tl.where(m_b, T, 0).to(tl.int64)
    return b_len


@triton.jit
def positions(b_len, m_b, s, REVERSE: tl.constexpr):
    """Rows valid at step ``s`` [BB] and the sequence position each works on [BB]: ``s``, or
    ``len - 1 - s`` backwards, so a reversed row starts at its own last valid step."""
    m_valid = m_b & (s < b_len)
    if REVERSE:  # noqa: SIM108 (a constexpr branch, not a runtime select)
        o_t = tl.where(m_valid, b_len - 1 - s, s)
    else:
        o_t = tl.zeros_like(b_len) + s
    return m_valid, o_t


def empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Every buffer a launcher hands to a kernel comes from here: the tests swap in a
    NaN-filled version, so an element a kernel never writes cannot pass."""
    return torch.empty(*shape, dtype=dtype, device=device)


class ForwardArgs(NamedTuple):
    """What every design's forward launcher takes: ``recurrence_forward``'s arguments."""

    xp: Tensor  # [T, B, 4H] input projection with both biases added
    w_hh: Tensor  # [4H, P]
    w_hr: Tensor | None  # [P, H] projection weight, or None
    h0: Tensor  # [B, P]
    c0: Tensor  # [B, H]
    lengths: Tensor | None  # [B] int64 in [1, T], or None: every sequence is T long
    reverse: bool


class BackwardArgs(NamedTuple):
    """What every design's backward launcher takes: ``recurrence_backward``'s arguments."""

    d_out: Tensor  # [T, B, P]
    d_hn: Tensor  # [B, P]
    d_cn: Tensor  # [B, H]
    w_hh: Tensor  # [4H, P]
    w_hr: Tensor | None  # [P, H], or None
    c0: Tensor  # [B, H]
    gates: Tensor  # [T, B, 4H] fp32 saved activations
    cs: Tensor  # [T, B, H] fp32 saved cell states
    lengths: Tensor | None  # [B] int64, or None
    reverse: bool
