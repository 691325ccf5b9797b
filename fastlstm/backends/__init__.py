"""Backends: interchangeable implementations of one direction of one LSTM layer.

Every backend module exposes ``run_direction(x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0,
lengths, reverse) -> (out, h_n, c_n)`` (see ``fastlstm.backends.reference``), so the layer
walk in ``fastlstm.functional`` never knows which one runs. :func:`select_backend` is the
single place that decides what ``backend="auto"`` means and whether a named backend can
serve a request.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType

import torch

from fastlstm.runtime import triton_interpreting

__all__ = ["BACKENDS", "BackendChoice", "get_backend", "select_backend"]

logger = logging.getLogger("fastlstm")

BACKENDS = ("auto", "reference", "aten", "triton")

# dtypes the fused aten LSTM runs per device type; the reference runs any float dtype.
_ATEN_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run a call, and why it was chosen."""

    name: str
    reason: str


def _triton_unavailable_reason(
    device: torch.device, dtype: torch.dtype, hidden_size: int, proj_size: int
) -> str | None:
    """None when the Triton kernels can serve this request, else why not."""
    if device.type == "cpu" and not triton_interpreting():
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    if device.type not in ("cpu", "cuda"):
        return f"device type {device.type!r} is not supported by the Triton kernels"
    try:
        triton_backend = get_backend("triton")
    except ImportError as err:
        return f"triton is not importable ({err})"
    return triton_backend.unsupported_reason(device, dtype, hidden_size, proj_size)


def select_backend(
    requested: str,
    device: torch.device,
    dtype: torch.dtype,
    hidden_size: int,
    proj_size: int = 0,
) -> BackendChoice:
    """Resolve ``requested`` (one of :data:`BACKENDS`) for a call on ``device``/``dtype``.

    ``auto`` picks the fastest backend that is correct for the request: the Triton kernels on
    CUDA when they can serve it, otherwise the fused aten LSTM, and the reference for dtypes
    the aten op lacks. A backend named explicitly that cannot serve the request raises a
    ``RuntimeError`` saying why, instead of silently running something else.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    aten_ok = dtype in _ATEN_DTYPES.get(device.type, ())
    if requested == "auto":
        if device.type == "cuda":
            why_not = _triton_unavailable_reason(device, dtype, hidden_size, proj_size)
            if why_not is None:
                return BackendChoice("triton", "CUDA tensors the Triton kernels can serve")
            if aten_ok:
                return BackendChoice("aten", f"Triton kernels unavailable: {why_not}")
        elif aten_ok:
            return BackendChoice("aten", f"fused aten LSTM is the fastest on {device.type}")
        return BackendChoice("reference", f"no fused kernel for {dtype} on {device.type}")
    if requested == "aten" and not aten_ok:
        raise RuntimeError(
            f"backend 'aten' cannot run dtype {dtype} on {device.type}; "
            "use backend='reference' or 'auto'"
        )
    if requested == "triton":
        why_not = _triton_unavailable_reason(device, dtype, hidden_size, proj_size)
        if why_not is not None:
            raise RuntimeError(
                f"backend 'triton' cannot serve this call: {why_not}; "
                "use backend='auto' to fall back automatically"
            )
    return BackendChoice(requested, "requested explicitly")


def get_backend(name: str) -> ModuleType:
    """The module implementing backend ``name`` (imported on first use)."""
    if name not in BACKENDS[1:]:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS[1:])}")
    return importlib.import_module(f"fastlstm.backends.{name}")
