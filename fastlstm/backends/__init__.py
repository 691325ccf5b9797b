"""Backends: interchangeable implementations of one direction of one LSTM layer.

Each backend is an entry of :data:`REGISTRY`: a name, a ``why_not(request)`` that says why it
cannot serve a call (None when it can), its ``run_direction(x, w_ih, w_hh, b_ih, b_hh, w_hr,
h0, c0, lengths, reverse, lengths_host)`` (the seam; see ``fastlstm.backends.reference``) and
optionally a whole-stack fast path. :func:`select_backend` is the one place that decides
whether a backend can serve a call and what ``backend="auto"`` means.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from fastlstm.backends import aten, reference
from fastlstm.runtime import triton_interpreting

__all__ = [
    "BACKENDS",
    "REGISTRY",
    "Backend",
    "BackendChoice",
    "Request",
    "get_backend",
    "select_backend",
    "triton_interpreting",
    "unavailable_reason",
]

logger = logging.getLogger("fastlstm")

BACKENDS = ("auto", "reference", "aten", "triton")

# dtypes the fused aten LSTM runs per device type; the reference runs any float dtype.
_ATEN_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}


@dataclass(frozen=True)
class Request:
    """What a call asks of a backend: everything ``why_not`` may look at."""

    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    proj_size: int = 0
    compiling: bool = False  # traced by torch.compile: the direction runs as a custom op
    transformed: bool = False  # under torch.func transforms (vmap, grad, ...)


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run a call, and why it was chosen."""

    name: str
    reason: str


@dataclass(frozen=True)
class Backend:
    """One registry entry.

    Attributes:
        name: as passed to ``fastlstm.LSTM(backend=...)``.
        why_not: ``(Request) -> str | None``; None when the backend can serve the request.
        run_direction: the seam (one direction of one layer).
        run_stack: optional ``(x, hx, flat_weights, has_biases, num_layers, dropout,
            training, bidirectional) -> out, h_n, c_n`` for padded input without lengths.
    """

    name: str
    why_not: Callable[[Request], str | None]
    run_direction: Callable
    run_stack: Callable | None = None


def _reference_why_not(request: Request) -> str | None:
    if not request.dtype.is_floating_point:
        return f"dtype {request.dtype} is not a floating-point dtype"
    return None


def _aten_why_not(request: Request) -> str | None:
    if request.dtype not in _ATEN_DTYPES.get(request.device.type, ()):
        return f"the fused aten LSTM cannot run dtype {request.dtype} on {request.device.type}"
    if request.compiling:
        return (
            "under torch.compile each direction runs as a custom op over a recurrence pair, "
            "and the fused aten op exposes none"
        )
    if request.transformed and (request.proj_size or request.device.type != "cpu"):
        # nn.LSTM itself fails there: with proj_size its CPU path writes in place.
        return (
            "torch.func transforms of the fused aten LSTM work only on the CPU without "
            "proj_size; use backend='reference'"
        )
    return None


def _triton_why_not(request: Request) -> str | None:
    if request.transformed:
        return (
            "torch.func transforms (vmap, grad, ...) cannot trace the fused kernels; "
            "use backend='reference' (any device) or backend='aten' on the CPU"
        )
    if request.device.type == "cpu" and not triton_interpreting():
        # Answered before importing triton: the import is slow, and triton reads
        # TRITON_INTERPRET only then, so an early import would pin the interpreter off.
        return "tensors are on the CPU and TRITON_INTERPRET=1 is not set"
    try:
        from fastlstm import kernels
    except ImportError as err:
        return f"triton is not importable ({err})"
    return kernels.unsupported_reason(
        request.device, request.dtype, request.hidden_size, request.proj_size
    )


def _triton_run_direction(*args) -> tuple:
    from fastlstm.backends import triton

    return triton.run_direction(*args)


REGISTRY: dict[str, Backend] = {
    "reference": Backend("reference", _reference_why_not, reference.run_direction),
    "aten": Backend("aten", _aten_why_not, aten.run_direction, aten.run_stack),
    # Imported on first use: importing triton is slow, and it may be absent.
    "triton": Backend("triton", _triton_why_not, _triton_run_direction),
}


def _request(device, dtype, hidden_size, proj_size, compiling, transformed) -> Request:
    return Request(torch.device(device), dtype, hidden_size, proj_size, compiling, transformed)


def unavailable_reason(
    name: str,
    device: torch.device | str,
    dtype: torch.dtype,
    hidden_size: int,
    proj_size: int = 0,
    *,
    compiling: bool = False,
    transformed: bool = False,
) -> str | None:
    """None when backend ``name`` can serve the request, else why not (never raises)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(REGISTRY)}")
    request = _request(device, dtype, hidden_size, proj_size, compiling, transformed)
    return REGISTRY[name].why_not(request)


def select_backend(
    requested: str,
    device: torch.device | str,
    dtype: torch.dtype,
    hidden_size: int,
    proj_size: int = 0,
    *,
    compiling: bool = False,
    transformed: bool = False,
) -> BackendChoice:
    """Resolve ``requested`` (one of :data:`BACKENDS`) for a call on ``device``/``dtype``.

    ``auto`` picks the fastest backend that is correct for the request: the Triton kernels on
    CUDA when they can serve it, otherwise the fused aten LSTM, and the reference for what
    the aten op cannot run (other dtypes; ``torch.compile`` and ``torch.func`` off the
    cases the aten op handles). ``compiling`` and ``transformed`` say whether the call is
    traced by ``torch.compile`` or runs under ``torch.func`` transforms. A
    backend named explicitly that cannot serve the request raises a ``RuntimeError`` saying
    why, instead of silently running something else.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    request = _request(device, dtype, hidden_size, proj_size, compiling, transformed)
    if requested != "auto":
        why_not = REGISTRY[requested].why_not(request)
        if why_not is not None:
            raise RuntimeError(
                f"backend {requested!r} cannot serve this call: {why_not}; "
                "use backend='auto' to fall back automatically"
            )
        return BackendChoice(requested, "requested explicitly")
    reasons = []
    if request.device.type == "cuda":
        why_not = REGISTRY["triton"].why_not(request)
        if why_not is None:
            return BackendChoice("triton", "CUDA tensors the Triton kernels can serve")
        reasons.append(f"Triton kernels unavailable: {why_not}")
    why_not = REGISTRY["aten"].why_not(request)
    if why_not is None:
        return BackendChoice("aten", "; ".join([*reasons, "the fused aten LSTM serves it"]))
    reasons.append(why_not)
    return BackendChoice("reference", "; ".join(reasons))


def get_backend(name: str) -> ModuleType:
    """The module implementing backend ``name`` (imported on first use)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(REGISTRY)}")
    return importlib.import_module(f"fastlstm.backends.{name}")
