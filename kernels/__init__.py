"""Fused Triton kernels for the LSTM recurrence (ships as ``fastlstm.kernels``).

``lstm_direction`` is the differentiable entry point for one direction of one layer;
``lstm_recurrence_forward``/``lstm_recurrence_backward`` are the bare launchers with the
same contract as the reference primitives; ``can_serve``/``unsupported_reason`` say when the
kernels cannot run a request. See ``docs/kernels.md`` for the maths and the design.
"""

from .launch import recurrence_config, unsupported_reason
from .lstm import can_serve, lstm_direction, lstm_recurrence_backward, lstm_recurrence_forward

__all__ = [
    "can_serve",
    "lstm_direction",
    "lstm_recurrence_backward",
    "lstm_recurrence_forward",
    "recurrence_config",
    "unsupported_reason",
]
