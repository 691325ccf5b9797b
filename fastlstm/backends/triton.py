"""Triton backend: the fused recurrence kernels of ``fastlstm.kernels`` under the shared glue.

Whether the kernels can serve a call is decided in ``fastlstm.backends.select_backend`` (which
asks ``fastlstm.kernels.unsupported_reason``); this module only runs them.
"""

from __future__ import annotations

from torch import Tensor

from fastlstm import direction, kernels
from fastlstm.kernels import unsupported_reason  # deprecated alias: ask select_backend

__all__ = ["RECURRENCE", "run_direction", "unsupported_reason"]

# The kernels' recurrence pair; fastlstm.kernels picks the kernel design inside it.
RECURRENCE = direction.Recurrence(
    "triton", kernels.lstm_recurrence_forward, kernels.lstm_recurrence_backward
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
    lengths_host: list[int] | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer with the fused Triton kernels (the backend seam).

    Arguments as :func:`fastlstm.backends.reference.run_direction`, already checked by
    ``fastlstm.functional``; ``fastlstm.kernels.lstm_direction`` is the checked public form.
    """
    return direction.run_direction(
        RECURRENCE, x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lengths, reverse
    )
