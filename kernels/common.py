"""What the kernel files share: ``@triton.jit`` helpers and the buffers launchers allocate."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["empty", "optional_inputs", "positions", "sigmoid", "tanh", "tile_lengths"]

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
