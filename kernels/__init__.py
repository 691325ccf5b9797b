"""Fused Triton kernels for the LSTM recurrence (ships as ``fastlstm.kernels``).

``lstm_direction`` is the differentiable entry point for one direction of one layer;
``lstm_recurrence_forward``/``lstm_recurrence_backward`` are the bare recurrence pair with the
same contract as the reference primitives, dispatching to the batch-tiled, persistent or
one-step-per-launch kernels by ``choose_design`` (``FASTLSTM_TRITON_DESIGN`` forces one);
``can_serve``/``unsupported_reason`` say when the kernels cannot run a request. See
``docs/kernels.md`` for the maths and the designs.
"""

from .launch import choose_design, forced_design, recurrence_config, unsupported_reason
from .lstm import can_serve, lstm_direction, lstm_recurrence_backward, lstm_recurrence_forward

__all__ = [
    "can_serve",
    "choose_design",
    "forced_design",
    "lstm_direction",
    "lstm_recurrence_backward",
    "lstm_recurrence_forward",
    "recurrence_config",
    "unsupported_reason",
]
