"""Run a benchmark grid: check every provider against nn.LSTM, then time it side by side.

For each shape the runner builds one problem (weights, batch, lengths, cotangents), runs the
nn.LSTM baseline once forward+backward to get the expected output, final state and every
gradient, and checks each provider against it before timing it. A provider whose check fails
gets no time and no speedup, only the error, so a fast wrong kernel can never look good.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from fastlstm.bench.providers import (
    BASELINE_FIXED,
    Case,
    Problem,
    applies_to,
    baseline_for,
    build_case,
    make_problem,
    provider_unavailable_reason,
)
from fastlstm.bench.shapes import Shape
from fastlstm.bench.timing import measure_interleaved, peak_memory

__all__ = ["MODES", "TOLERANCES", "RunConfig", "check_case", "run_benchmarks"]

MODES = ("fwd", "fwd+bwd")

# Largest accepted error, relative to the largest magnitude of the expected tensor: LSTM
# outputs are bounded by 1, so this is close to an absolute error on outputs, and it scales
# with gradients that grow over long sequences.
TOLERANCES = {
    torch.float64: 1e-7,
    torch.float32: 2e-3,
    torch.bfloat16: 6e-2,
    torch.float16: 2e-2,
}


@dataclass(frozen=True)
class RunConfig:
    """How hard to measure: untimed warmup calls, timed repeats, seconds per measurement."""

    warmup: int = 1
    repeats: int = 10
    min_repeats: int = 3
    budget_s: float | None = 1.0
    memory: bool = True
    seed: int = 0


@dataclass
class _Expected:
    out: Tensor  # [T, B, D*H]
    h_n: Tensor
    c_n: Tensor
    input_grad: Tensor  # [T, B, I]
    weight_grads: list[Tensor]


def _results(case: Case) -> _Expected:
    """Run ``case`` forward+backward once and collect every compared tensor."""
    for leaf in case.leaves:
        leaf.grad = None
    out, h_n, c_n = case.call()
    padded = case.padded(out)
    out_t = out.data if hasattr(out, "batch_sizes") else out
    g_out = case.grad_out.data if hasattr(case.grad_out, "batch_sizes") else case.grad_out
    torch.autograd.backward([out_t, h_n, c_n], [g_out, case.grad_h, case.grad_c])
    input_grad = case.input_grad()
    weight_grads = [leaf.grad for leaf in case.leaves[1:]]
    if input_grad is None or any(g is None for g in weight_grads):
        raise RuntimeError(f"{case.provider}: backward left a gradient unset")
    return _Expected(
        padded.detach(),
        h_n.detach(),
        c_n.detach(),
        input_grad.detach(),
        [g.detach() for g in weight_grads],
    )


def _rel_err(got: Tensor, want: Tensor) -> float:
    if got.shape != want.shape:
        return float("inf")
    if not torch.isfinite(got).all():
        return float("inf")
    scale = want.abs().max().double().clamp_min(1e-12)
    return float((got.double() - want.double()).abs().max() / scale)


def check_case(case: Case, expected: _Expected, tol: float) -> tuple[bool, float, str]:
    """Compare ``case`` with the baseline's results; returns (ok, worst error, what failed)."""
    got = _results(case)
    pairs = [
        ("output", got.out, expected.out),
        ("h_n", got.h_n, expected.h_n),
        ("c_n", got.c_n, expected.c_n),
        ("grad input", got.input_grad, expected.input_grad),
    ]
    pairs += [
        (f"grad weight[{i}]", g, w)
        for i, (g, w) in enumerate(zip(got.weight_grads, expected.weight_grads, strict=True))
    ]
    worst, where = 0.0, ""
    for name, g, w in pairs:
        err = _rel_err(g, w)
        if err > worst:
            worst, where = err, name
    ok = worst <= tol
    detail = "" if ok else f"{where} differs from nn.LSTM: relative error {worst:.2e} > {tol:.0e}"
    return ok, worst, detail


def _row(shape: Shape, provider: str, mode: str, **fields: object) -> dict[str, object]:
    row: dict[str, object] = {**shape.as_dict(), "provider": provider, "mode": mode}
    row.update(
        {
            "status": "ok",
            "detail": "",
            "backend": None,
            "median_ms": None,
            "q1_ms": None,
            "q3_ms": None,
            "min_ms": None,
            "repeats": None,
            "peak_mem_bytes": None,
            "check_rel_err": None,
            "baseline": baseline_for(shape),
            "speedup": None,
        }
    )
    row.update(fields)
    return row


def _progress(total: int, enabled: bool):
    """A tqdm bar on stderr, or a no-op stand-in when tqdm is missing or disabled."""
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
        except ImportError:
            pass

    class _NoBar:
        def update(self, n: int = 1) -> None:
            pass

        def set_description_str(self, s: str) -> None:
            pass

        def close(self) -> None:
            pass

    return _NoBar()


def run_benchmarks(
    shapes: Sequence[Shape],
    providers: Iterable[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    modes: Sequence[str] = MODES,
    config: RunConfig | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[dict[str, object]]:
    """Check and time every (shape, provider, mode); returns one row per combination.

    Rows carry the shape, provider, mode, status (``ok``, ``check failed``, ``unavailable``,
    ``not applicable`` or ``error``), times in milliseconds, peak memory (fwd+bwd rows) and
    the speedup over the shape's nn.LSTM baseline measured in the same run.
    """
    device = torch.device(device)
    config = config or RunConfig()
    providers = list(providers)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    tol = TOLERANCES.get(dtype)
    if tol is None:
        raise ValueError(f"dtype {dtype} is not benchmarked; expected one of {list(TOLERANCES)}")
    rows: list[dict[str, object]] = []
    bar = _progress(len(shapes) * len(providers), progress)
    try:
        for shape in shapes:
            rows.extend(_run_shape(shape, providers, device, dtype, modes, config, tol, bar))
    finally:
        bar.close()
    return rows


def _run_shape(
    shape: Shape,
    providers: list[str],
    device: torch.device,
    dtype: torch.dtype,
    modes: Sequence[str],
    config: RunConfig,
    tol: float,
    bar,
) -> list[dict[str, object]]:
    problem = make_problem(shape, device, dtype, config.seed)
    baseline = baseline_for(shape)
    expected = _results(build_case(baseline, problem))
    done: dict[str, list[dict[str, object]]] = {}  # providers settled without timing
    ready: dict[str, tuple[Case, float | None, str]] = {}  # checked: (case, error, detail)
    for provider in providers:
        bar.set_description_str(f"{shape.id} check {provider}")
        outcome = _prepare(shape, provider, problem, expected, modes, tol)
        if isinstance(outcome, list):
            done[provider] = outcome
        else:
            ready[provider] = outcome
    timed: dict[tuple[str, str], dict[str, object]] = {}
    for mode in modes:
        bar.set_description_str(f"{shape.id} {mode} x{len(ready)}")
        fns = {
            name: (case.forward if mode == "fwd" else case.forward_backward)
            for name, (case, _, _) in ready.items()
        }
        timings = measure_interleaved(
            fns,
            device,
            warmup=config.warmup,
            repeats=config.repeats,
            min_repeats=config.min_repeats,
            budget_s=config.budget_s,
        )
        for name, (case, err, detail) in ready.items():
            t = timings[name]
            mem = None
            if config.memory and mode == "fwd+bwd":
                mem = peak_memory(fns[name], device)
            timed[(name, mode)] = _row(
                shape,
                name,
                mode,
                detail=detail,
                backend=case.backend_ran,
                median_ms=t.median * 1e3,
                q1_ms=t.q1 * 1e3,
                q3_ms=t.q3 * 1e3,
                min_ms=t.min * 1e3,
                repeats=t.repeats,
                peak_mem_bytes=mem,
                check_rel_err=err,
            )
    bar.update(len(providers))
    rows: list[dict[str, object]] = []
    for provider in providers:
        rows.extend(done.get(provider) or [timed[(provider, m)] for m in modes])
    # Speedups only against a baseline timed in this same run, never across runs.
    base_times = {
        r["mode"]: r["median_ms"]
        for r in rows
        if r["provider"] == baseline and r["status"] == "ok" and r["median_ms"]
    }
    for r in rows:
        base = base_times.get(r["mode"])
        if r["status"] == "ok" and r["median_ms"] and base:
            r["speedup"] = base / r["median_ms"]
    return rows


def _prepare(
    shape: Shape,
    provider: str,
    problem: Problem,
    expected: _Expected,
    modes: Sequence[str],
    tol: float,
) -> tuple[Case, float | None, str] | list[dict[str, object]]:
    """Build and check one provider: the checked case, or final rows saying why it is out."""
    device = problem.x.device
    if not applies_to(provider, shape):
        return [
            _row(shape, provider, m, status="not applicable", detail="needs variable lengths")
            for m in modes
        ]
    why_not = provider_unavailable_reason(provider, device, problem.x.dtype, shape)
    if why_not is not None:
        return [_row(shape, provider, m, status="unavailable", detail=why_not) for m in modes]
    try:
        case = build_case(provider, problem)
        if provider == BASELINE_FIXED and shape.variable:
            # nn.LSTM on a padded batch computes a different function (it runs through the
            # padding), so there is nothing to check; it is timed as the common shortcut.
            return case, None, "ignores lengths (not checked)"
        ok, err, detail = check_case(case, expected, tol)
    except Exception as exc:  # a provider that crashes is reported, not fatal to the run
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return [_row(shape, provider, m, status="error", detail=msg) for m in modes]
    if not ok:
        return [
            _row(shape, provider, m, status="check failed", detail=detail, check_rel_err=err)
            for m in modes
        ]
    return case, err, ""
