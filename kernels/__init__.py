"""Fused Triton kernels for the LSTM recurrence (ships as ``fastlstm.kernels``).

The bottom layer of fastlstm: it imports torch, triton and its own files only.

- ``recurrence_forward`` / ``recurrence_backward``: the recurrence pair over a precomputed
  input projection (no autograd), with the contract of the reference backend's pair; the
  autograd glue that turns it into a differentiable LSTM direction is ``fastlstm.direction``.
- ``why_not``: why the kernels (or one design) cannot serve a call, or None.
- ``choose_design`` / ``measured_designs``: which design runs, from ``FASTLSTM_TRITON_DESIGN``,
  the committed GPU measurements (``kernels/measured.json``) or the latency model.

Files, bottom up: ``launch.py`` (targets, tiles, limits, the launch door), ``common.py``
(shared ``@triton.jit`` helpers), ``batch.py`` and ``persistent.py`` (each design's kernels
and launchers), ``measured.py`` (the design table), ``dispatch.py`` (the one dispatcher).
See docs/kernels.md for the maths and the designs.
"""

from typing import Any

from .launch import DESIGN_ENV, DESIGNS, dot_precision, why_not


# The dispatcher imports triton, which is slow to import and may be absent; launch.py does
# not. Importing the package (or fastlstm.kernels.launch) to ask why_not or read DESIGNS
# therefore leaves triton alone, and the dispatcher's names load on first use.
def __getattr__(name: str) -> Any:
    if name != "dispatch" and not name.startswith("__"):  # not while importing the submodule
        from . import dispatch

        if name in dispatch.__all__:
            return getattr(dispatch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DESIGNS",
    "DESIGN_ENV",
    "KernelLaunchError",
    "choose_design",
    "dot_precision",
    "forced_design",
    "measured_designs",
    "recurrence_backward",
    "recurrence_forward",
    "why_not",
]
