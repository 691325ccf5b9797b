"""The one dispatcher: which kernel design runs a call, and what happens when one fails.

``recurrence_forward`` / ``recurrence_backward`` are the recurrence pair of the Triton kernels
(the contract of ``fastlstm.backends.reference.recurrence_forward`` / ``recurrence_backward``):
they plan the tiles for the device, launch a design, and on a launch failure
(``OutOfResources``, a refused cooperative launch) fall back to the next design with one
warning, never retrying the failed design for that device and configuration. A persistent
design's barrier timeout is found without a host sync: its error flag is copied to pinned
memory behind the kernel and read at a later call once the copy has landed; the timed-out
results are NaN (the kernels poison them), and the design is not used again for that
configuration.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from triton.runtime.errors import OutOfResources

from . import batch, measured, persistent
from .common import BackwardArgs, ForwardArgs
from .launch import (
    DESIGN_ENV,
    DESIGNS,
    batch_config,
    design_step_us,
    dot_precision,
    persistent_config,
    target_of,
    why_not,
)

__all__ = [
    "KernelLaunchError",
    "choose_design",
    "forced_design",
    "launch_design",
    "measured_designs",
    "recurrence_backward",
    "recurrence_forward",
]


class KernelLaunchError(RuntimeError):
    """Every design a call could use failed to launch (the message lists the causes)."""


@dataclass(frozen=True)
class _Config:
    """What a launch failure is remembered by: the device and the problem's shape class."""

    device: str
    design: str
    dtype: torch.dtype
    batch: int
    hidden: int
    proj: int
    precision: str

    def describe(self) -> str:
        proj = f", proj_size {self.proj}" if self.proj else ""
        return f"{self.dtype} ({self.precision}) batch {self.batch}, hidden {self.hidden}{proj}"


# Designs that failed, by configuration, with the cause; and barrier flags not yet read.
_FAILED: dict[_Config, str] = {}
_PENDING: list[tuple[_Config, Tensor, torch.cuda.Event | None]] = []


def forced_design() -> str | None:
    """The design ``FASTLSTM_TRITON_DESIGN`` forces, or None when it is unset or empty.

    Read at every call. Raises ValueError for any other value.
    """
    value = os.environ.get(DESIGN_ENV, "").strip()
    if not value:
        return None
    if value not in DESIGNS:
        raise ValueError(
            f"{DESIGN_ENV}={value!r} is not a kernel design: use one of "
            f"{', '.join(DESIGNS)}, or leave it unset"
        )
    return value


def measured_designs(
    device: torch.device, dtype: torch.dtype, batch_size: int, hidden: int, proj: int
) -> tuple[tuple[str, ...], str]:
    """The designs a committed measurement says beat cuDNN here, fastest first, with why.

    Designs that failed on this device and configuration are left out. An empty tuple means
    no design is measured faster than cuDNN near this call: ``backend="auto"`` then runs
    cuDNN.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return (), "no measurement applies off a GPU"
    _read_barrier_flags()
    precision = dot_precision(dtype)
    key = measured.precision_key(dtype, precision)
    found = measured.lookup(
        target_of(device).name, triton.__version__, key, batch_size, hidden, proj
    )
    if found is None:
        name = target_of(device).name
        return (), f"no measurement of the Triton designs near this call on {name}"
    ratios, where = found
    wins = sorted((d for d in ratios if ratios[d] > 1.0), key=lambda d: -ratios[d])
    usable = tuple(
        d
        for d in wins
        if _config(device, d, dtype, batch_size, hidden, proj) not in _FAILED
        and why_not(device, dtype, hidden, proj, batch=batch_size, design=d) is None
    )
    text = ", ".join(f"{d} {ratios[d]:.2f}x" for d in sorted(ratios, key=lambda d: -ratios[d]))
    return usable, f"{where}: {text} of cuDNN"


def choose_design(
    device: torch.device, dtype: torch.dtype, batch_size: int, hidden: int, proj: int
) -> tuple[str, str]:
    """``(design, reason)`` for ``backend="triton"`` without a pinned design.

    ``FASTLSTM_TRITON_DESIGN`` first; then the fastest design measured on this GPU near this
    shape; under the interpreter the batch-tiled design (programs run one after another
    there, so no design is faster); else the smallest modelled time per step among the
    designs that can serve the call (an estimate: docs/kernels.md).

    Raises:
        ValueError: ``FASTLSTM_TRITON_DESIGN`` holds an unknown value.
        RuntimeError: the forced design cannot serve the call (the message says why).
    """
    device = torch.device(device)
    forced = forced_design()
    if forced is not None:
        reason = why_not(device, dtype, hidden, proj, batch=batch_size, design=forced)
        if reason is not None:
            raise RuntimeError(
                f"{DESIGN_ENV}={forced} forces the {forced!r} kernel design, which cannot run "
                f"this call: {reason}"
            )
        return forced, f"forced by {DESIGN_ENV}={forced}"
    wins, where = measured_designs(device, dtype, batch_size, hidden, proj)
    if wins:
        return wins[0], where
    if target_of(device).interpreter:
        return "batch", "the interpreter runs programs one at a time: batch-tiled kernels"
    times = {
        d: design_step_us(d, dtype, batch_size, hidden, proj, sms=target_of(device).sms)
        for d in DESIGNS
        if why_not(device, dtype, hidden, proj, batch=batch_size, design=d) is None
        and _config(device, d, dtype, batch_size, hidden, proj) not in _FAILED
    }
    if not times:
        return "batch", "no other design can serve this call"
    best = min(times, key=lambda d: (times[d], DESIGNS.index(d)))
    modelled = ", ".join(f"{d} {t:.1f}" for d, t in times.items())
    return best, f"smallest modelled us/step, an estimate ({modelled}); {where}"


def _config(device, design, dtype, batch_size, hidden, proj) -> _Config:
    return _Config(str(device), design, dtype, batch_size, hidden, proj, dot_precision(dtype))


def _candidates(designs, device, dtype, batch_size, hidden, proj) -> tuple[tuple[str, ...], bool]:
    """The designs to try in order, and whether falling back between them is allowed."""
    if designs is not None:
        for d in designs:
            if d not in DESIGNS:
                raise ValueError(f"unknown kernel design {d!r} (expected one of {DESIGNS})")
        return tuple(designs), len(designs) > 1
    first, _ = choose_design(device, dtype, batch_size, hidden, proj)
    if forced_design() is not None:
        return (first,), False
    return (first, *DESIGNS[DESIGNS.index(first) + 1 :]), True


def _is_launch_failure(err: Exception) -> bool:
    # OutOfResources (shared memory, registers) or a launch the driver refused, such as a
    # cooperative grid larger than the GPU can hold at once.
    if isinstance(err, OutOfResources):
        return True
    return isinstance(err, RuntimeError) and str(err).startswith("Triton Error")


def _read_barrier_flags() -> None:
    """Read the barrier flags whose copies have landed (no sync); retire failed designs."""
    still = []
    for config, flag, event in _PENDING:
        if event is not None and not event.query():
            still.append((config, flag, event))
        elif int(flag[0]) != 0:
            _retire(config, "a grid barrier timed out (its results were NaN)")
    _PENDING[:] = still


def _watch_barrier(config: _Config, flag: Tensor) -> None:
    """Copy the kernel's error flag to the host behind it, to be read at a later call."""
    if flag.device.type != "cuda":
        _PENDING.append((config, flag, None))
        return
    host = torch.empty(1, dtype=torch.int32, pin_memory=True)
    host.copy_(flag, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    _PENDING.append((config, host, event))


def _retire(config: _Config, cause: str) -> None:
    if config in _FAILED:
        return
    _FAILED[config] = cause
    warnings.warn(
        f"fastlstm: the {config.design!r} Triton kernel design failed on {config.device} for "
        f"{config.describe()}: {cause}. It is not used again for this configuration; the "
        "next design in line runs instead.",
        RuntimeWarning,
        stacklevel=4,
    )


def launch_design(design: str, kind: str, a, cfg, *, cooperative: bool):
    """Run one design's ``kind`` ("forward" or "backward") launcher on ``a`` (ForwardArgs or
    BackwardArgs) at ``cfg``; returns its results and, for ``persistent``, the barrier's error
    flag (else None). ``benchmarks/kernel_resources.py`` compiles through this door too."""
    if design == "batch":
        launcher = batch.forward if kind == "forward" else batch.backward
        return launcher(a, cfg), None
    # Looked up at call time: the tests replace launchers to watch or fail them.
    launcher = getattr(persistent, f"{design}_{kind}")
    if design == "step":
        return launcher(a, cfg), None
    return launcher(a, cfg, cooperative=cooperative)


def _run(kind: str, designs, a, shape: tuple, device: torch.device, dtype: torch.dtype):
    """Try ``designs`` in order on ``a``, each at the tiles planned for ``device``."""
    batch_size, hidden, proj = shape
    target = target_of(device)
    _read_barrier_flags()
    order, fallback = _candidates(designs, device, dtype, batch_size, hidden, proj)
    causes = []
    for design in order:
        config = _config(device, design, dtype, batch_size, hidden, proj)
        if fallback and config in _FAILED:
            causes.append(f"{design}: {_FAILED[config]}")
            continue
        reason = why_not(device, dtype, hidden, proj, batch=batch_size, design=design)
        if reason is not None:
            if not fallback:
                raise RuntimeError(f"the {design} LSTM kernels cannot run this call: {reason}")
            causes.append(f"{design}: {reason}")
            continue
        if design == "batch":
            cfg = batch_config(batch_size, hidden)
        else:
            cfg = persistent_config(target, design, dtype, batch_size, hidden, proj)
        try:
            results, flag = launch_design(design, kind, a, cfg, cooperative=not target.interpreter)
        except Exception as err:
            if not (fallback and _is_launch_failure(err)):
                raise
            _retire(config, f"{type(err).__name__}: {err}")
            causes.append(f"{design}: {err}")
            continue
        if flag is not None:
            _watch_barrier(config, flag)
        return results
    raise KernelLaunchError(
        f"no Triton kernel design could run this {kind} pass: " + "; ".join(causes)
    )


def recurrence_forward(
    xp: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    h0: Tensor,
    c0: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    designs: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Run the recurrence over a precomputed input projection (no autograd).

    Args:
        xp: ``[T, B, 4H]`` input projection with both biases added.
        w_hh: ``[4H, P]`` recurrent weight; w_hr: ``[P, H]`` projection weight or None.
        h0, c0: ``[B, P]`` and ``[B, H]`` initial state.
        lengths: ``[B]`` int64 valid lengths (``1 <= len <= T``) on ``xp.device``, or None.
        reverse: run each sequence backwards from its own last valid step.
        designs: the designs to try, in order (one pins it: no fallback); None for
            :func:`choose_design`'s pick followed by the designs after it in
            ``launch.DESIGNS`` (none after a design forced by ``FASTLSTM_TRITON_DESIGN``).

    Returns:
        ``out [T, B, P]`` (dtype of ``xp``, zero past each length), ``h_n [B, P]``,
        ``c_n [B, H]``, and for backward ``gates [T, B, 4H]`` (activations i, f, g, o) and
        ``cs [T, B, H]`` (cell state after each step), fp32, at sequence positions and zero at
        padded ones. Every design saves this layout, so backward may run another design.

    Raises:
        KernelLaunchError: every design tried failed to launch.
        RuntimeError: a pinned or forced design cannot serve the call.
    """
    _, B, G = xp.shape
    proj = 0 if w_hr is None else w_hh.shape[1]
    a = ForwardArgs(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    return _run("forward", designs, a, (B, G // 4, proj), xp.device, w_hh.dtype)


def recurrence_backward(
    d_out: Tensor,
    d_hn: Tensor,
    d_cn: Tensor,
    w_hh: Tensor,
    w_hr: Tensor | None,
    c0: Tensor,
    gates: Tensor,
    cs: Tensor,
    lengths: Tensor | None,
    reverse: bool,
    designs: Sequence[str] | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Backpropagation through time over the saved ``gates`` and ``cs``.

    Returns fp32 ``d_xp [T, B, 4H]`` (zero past each length), ``d_h0 [B, P]``,
    ``d_c0 [B, H]`` and, with a projection, ``d_hs [T, B, P]`` (the total gradient reaching
    each step's projected h, for ``dW_hr``), else None. ``designs`` as for
    :func:`recurrence_forward`.
    """
    _, B, G = gates.shape
    proj = 0 if w_hr is None else w_hh.shape[1]
    a = BackwardArgs(d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    return _run("backward", designs, a, (B, G // 4, proj), gates.device, w_hh.dtype)
