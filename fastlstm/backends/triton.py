"""Triton backend: the fused recurrence kernels of ``fastlstm.kernels`` behind the seam."""

from __future__ import annotations

import torch
from torch import Tensor

from fastlstm.kernels import lstm_direction
from fastlstm.kernels import unsupported_reason as _kernel_unsupported_reason

__all__ = ["run_direction", "unsupported_reason"]


def unsupported_reason(
    device: torch.device, dtype: torch.dtype, hidden_size: int, proj_size: int
) -> str | None:
    """None when the kernels can run this request, else a human-readable reason."""
    return _kernel_unsupported_reason(
        device=device, dtype=dtype, hidden_size=hidden_size, proj_size=proj_size
    )


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
    """One direction of one layer with the fused Triton kernels (the backend seam)."""
    return lstm_direction(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse)
