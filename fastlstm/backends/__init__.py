"""Backends: interchangeable implementations of one direction of one LSTM layer, as data.

Each backend is an entry of :data:`REGISTRY`: a name, a ``why_not(request)`` that says why it
cannot serve a call (None when it can), and what it runs: a :class:`~fastlstm.direction.Recurrence`
pair that the shared autograd glue drives (``reference``, ``triton``), or a direction of its
own (``aten``, the fused op ``nn.LSTM`` runs, which exposes no recurrence pair), optionally
with a whole-stack fast path. :func:`select_backend` is the one place that decides whether a
backend can serve a call and what ``backend="auto"`` means.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType

import torch

from fastlstm.backends import aten, reference
from fastlstm.direction import Recurrence
from fastlstm.kernels import launch as kernels_launch
from fastlstm.kernels.launch import DESIGNS

__all__ = [
    "BACKENDS",
    "DESIGNS",
    "REGISTRY",
    "Backend",
    "BackendChoice",
    "Request",
    "recurrence",
    "select_backend",
]

logger = logging.getLogger("fastlstm")

BACKENDS = ("auto", "reference", "aten", "triton")


@dataclass(frozen=True)
class Request:
    """What a call asks of a backend: everything ``why_not`` may look at."""

    device: torch.device
    dtype: torch.dtype
    hidden_size: int
    proj_size: int = 0
    batch_size: int = 1
    design: str | None = None  # a Triton kernel design pinned by the caller
    compiling: bool = False  # traced (torch.compile, export, jit.trace): runs as a custom op
    transformed: bool = False  # under torch.func transforms (vmap, grad, ...)


@dataclass(frozen=True)
class BackendChoice:
    """The backend that will run a call, why, and for ``triton`` the designs to try."""

    name: str
    reason: str
    designs: tuple[str, ...] | None = None
    pinned: bool = False  # the caller pinned the one design: no fallback


@dataclass(frozen=True)
class Backend:
    """One registry entry.

    Attributes:
        name: as passed to ``fastlstm.LSTM(backend=...)``.
        why_not: ``(Request) -> str | None``; None when the backend can serve the request.
        run_direction: a direction of its own (the fused aten op); None for the backends
            whose direction is the shared glue over :func:`recurrence`.
        run_stack: optional ``(x, hx, flat_weights, has_biases, num_layers, dropout,
            training, bidirectional) -> out, h_n, c_n`` for padded input without lengths.
    """

    name: str
    why_not: Callable[[Request], str | None]
    run_direction: Callable | None = None
    run_stack: Callable | None = None


# dtypes the fused aten LSTM runs per device type; the reference runs any float dtype.
_ATEN_DTYPES = {
    "cpu": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
    "cuda": (torch.float32, torch.float64, torch.bfloat16, torch.float16),
}


def _reference_why_not(request: Request) -> str | None:
    if not request.dtype.is_floating_point:
        return f"dtype {request.dtype} is not a floating-point dtype"
    return None


def _aten_why_not(request: Request) -> str | None:
    if request.dtype not in _ATEN_DTYPES.get(request.device.type, ()):
        return f"the fused aten LSTM cannot run dtype {request.dtype} on {request.device.type}"
    if request.compiling:
        return (
            "in a traced graph (torch.compile, torch.export, torch.jit.trace) each direction "
            "runs as a custom op over a recurrence pair, and the fused aten op exposes none"
        )
    if request.transformed and (request.proj_size or request.device.type != "cpu"):
        # nn.LSTM itself fails there: with proj_size its CPU path writes in place.
        return (
            "torch.func transforms of the fused aten LSTM work only on the CPU without "
            "proj_size; use backend='reference'"
        )
    return None


@functools.cache
def _kernels() -> ModuleType:
    """``fastlstm.kernels``, imported on first use: importing triton is slow, and it may be
    absent (ImportError)."""
    from fastlstm import kernels

    return kernels


def _triton_why_not(request: Request) -> str | None:
    if request.transformed:
        return (
            "torch.func transforms (vmap, grad, ...) cannot trace the fused kernels; "
            "use backend='reference' (any device) or backend='aten' on the CPU"
        )
    # Asked without importing triton (kernels/launch.py does not), which reads
    # TRITON_INTERPRET only on import and is slow to import.
    reason = kernels_launch.why_not(
        request.device,
        request.dtype,
        request.hidden_size,
        request.proj_size,
        batch=request.batch_size,
        design=request.design,
    )
    if reason is not None:
        return reason
    try:
        _kernels()
    except ImportError as err:
        return f"triton is not importable ({err})"
    return None


REGISTRY: dict[str, Backend] = {
    "reference": Backend("reference", _reference_why_not),
    "aten": Backend(
        "aten", _aten_why_not, run_direction=aten.run_direction, run_stack=aten.run_stack
    ),
    "triton": Backend("triton", _triton_why_not),
}


def recurrence(
    name: str, designs: tuple[str, ...] | None = None, pinned: bool = False
) -> Recurrence:
    """The recurrence pair backend ``name`` runs under the shared glue.

    For ``triton``, ``designs`` are the kernel designs to try in order (None: the kernels'
    own choice and fallback chain). Unless ``pinned``, backward may also fall back to the
    batch-tiled design, which every saved state allows: once forward has run, backward must
    finish on some Triton design.
    """
    if name == "reference":
        return reference.RECURRENCE
    if name != "triton":
        raise ValueError(f"backend {name!r} has no recurrence pair (use 'reference' or 'triton')")
    kernels = _kernels()
    backward_designs = designs
    if designs is not None and not pinned and "batch" not in designs:
        backward_designs = (*designs, "batch")
    return Recurrence(
        "triton",
        functools.partial(kernels.recurrence_forward, designs=designs),
        functools.partial(kernels.recurrence_backward, designs=backward_designs),
    )


def select_backend(
    requested: str,
    device: torch.device | str,
    dtype: torch.dtype,
    hidden_size: int,
    proj_size: int = 0,
    *,
    batch_size: int = 1,
    design: str | None = None,
    compiling: bool = False,
    transformed: bool = False,
) -> BackendChoice:
    """Resolve ``requested`` (one of :data:`BACKENDS`) for one call.

    ``auto`` runs the Triton kernels only where a committed GPU measurement says a design
    beats cuDNN near this shape (``fastlstm.kernels.measured_designs``), the fused aten LSTM
    (cuDNN, oneDNN) elsewhere, and the reference where the aten op cannot run (other
    dtypes; traced graphs and ``torch.func`` off the cases the aten op handles).
    ``design`` pins a Triton kernel design (``backend="triton"`` only). A backend named
    explicitly that cannot serve the call raises a ``RuntimeError`` saying why.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {', '.join(BACKENDS)}")
    if design is not None and requested != "triton":
        raise ValueError(f"design={design!r} pins a Triton kernel design: use backend='triton'")
    request = Request(
        torch.device(device),
        dtype,
        hidden_size,
        proj_size,
        batch_size,
        design,
        compiling,
        transformed,
    )
    if requested != "auto":
        why_not = REGISTRY[requested].why_not(request)
        if why_not is not None:
            raise RuntimeError(
                f"backend {requested!r} cannot serve this call: {why_not}; "
                "use backend='auto' to fall back automatically"
            )
        if design is not None:
            return BackendChoice("triton", "requested explicitly", (design,), pinned=True)
        return BackendChoice(requested, "requested explicitly")
    reasons = []
    if request.device.type == "cuda":
        why_not = REGISTRY["triton"].why_not(request)
        if why_not is None:
            wins, where = _kernels().measured_designs(
                request.device, dtype, batch_size, hidden_size, proj_size
            )
            if wins:
                return BackendChoice("triton", f"measured faster than cuDNN: {where}", wins)
            reasons.append(where)
        else:
            reasons.append(f"Triton kernels unavailable: {why_not}")
    why_not = REGISTRY["aten"].why_not(request)
    if why_not is None:
        return BackendChoice("aten", "; ".join([*reasons, "the fused aten LSTM serves it"]))
    reasons.append(why_not)
    return BackendChoice("reference", "; ".join(reasons))
