"""Test helpers shared across the suite."""

from __future__ import annotations

import torch
from torch import Tensor

from fastlstm import functional
from fastlstm.backends import REGISTRY, Request

# (atol, rtol) per dtype, for comparing two implementations of the same math.
TOLERANCES = {
    torch.float64: (1e-10, 1e-8),
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (5e-3, 5e-3),
}


def assert_close(actual: Tensor, expected: Tensor, name: str, atol=None, rtol=None) -> None:
    """Assert ``actual`` matches ``expected``; on failure report the max abs error and where.

    NaN or inf in ``actual`` where ``expected`` is finite fails (an unwritten or blown-up
    element must not pass).
    """
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    default_atol, default_rtol = TOLERANCES.get(expected.dtype, (1e-5, 1e-4))
    atol = default_atol if atol is None else atol
    rtol = default_rtol if rtol is None else rtol
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    bad_nan = ~torch.isfinite(a) & torch.isfinite(e)
    if bad_nan.any():
        where = tuple(int(i) for i in bad_nan.nonzero()[0])
        raise AssertionError(f"{name}: non-finite value at {where} ({int(bad_nan.sum())} total)")
    err = (a - e).abs()
    allowed = atol + rtol * e.abs()
    if (err > allowed).any():
        flat = int((err - allowed).argmax())
        where = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), err.shape))
        raise AssertionError(
            f"{name}: max abs error {err.max().item():.3e} (atol={atol:g}, rtol={rtol:g}); "
            f"worst at {where}: got {a[where].item():.6g}, expected {e[where].item():.6g}"
        )


def triton_direction(*args, **kwargs) -> tuple[Tensor, Tensor, Tensor]:
    """One direction on the Triton kernels (``fastlstm.functional.lstm_direction``)."""
    return functional.lstm_direction(*args, backend="triton", **kwargs)


def reference_direction(*args, **kwargs) -> tuple[Tensor, Tensor, Tensor]:
    """The oracle: one direction on the reference backend."""
    return functional.lstm_direction(*args, backend="reference", **kwargs)


def backend_why_not(name: str, device="cpu", dtype=torch.float32, hidden: int = 16) -> str | None:
    """Why backend ``name`` cannot serve a small call on ``device`` (None when it can)."""
    return REGISTRY[name].why_not(Request(torch.device(device), dtype, hidden))
