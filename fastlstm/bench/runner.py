"""Run a benchmark grid: check every provider against nn.LSTM, then time it side by side.

For each shape the runner builds one problem (weights, batch, lengths, cotangents), runs the
nn.LSTM baseline once forward+backward to get the expected output, final state and every
gradient, and checks each provider against it before timing it. A provider whose check fails
gets no time and no speedup, only the error, so a fast wrong kernel can never look good.

A run may cover several precisions (``float32``, ``tf32``, ``bfloat16``...): each is its own
problem with its own baseline, and on CUDA the TF32 switches are set for it explicitly.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    design_of,
    make_problem,
    provider_why_not,
)
from fastlstm.bench.shapes import Shape
from fastlstm.bench.timing import measure_interleaved, peak_memory
from fastlstm.runtime import steady_cpu_allocator

__all__ = [
    "MODES",
    "PRECISIONS",
    "Precision",
    "Results",
    "RunConfig",
    "check_case",
    "collect_results",
    "resolve_precisions",
    "run_benchmarks",
]

MODES = ("fwd", "fwd+bwd")


@dataclass(frozen=True)
class Precision:
    """A benchmarked number format: the tensors' dtype and, for float32, the TF32 switches.

    ``tf32`` is None where TF32 does not apply (other dtypes); for float32 it is the value
    given to both ``torch.backends.cudnn.allow_tf32`` (nn.LSTM's cuDNN and fastlstm's Triton
    kernels follow it) and ``torch.backends.cuda.matmul.allow_tf32`` (the input GEMMs) for
    the run; the switches only matter on CUDA. ``tolerance`` is the largest accepted error,
    relative to the largest magnitude of the expected tensor: LSTM outputs are bounded by 1,
    so this is close to an absolute error on outputs, and it scales with gradients that grow
    over long sequences.
    """

    name: str
    dtype: torch.dtype
    tf32: bool | None
    tolerance: float


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("float64", torch.float64, None, 1e-7),
        Precision("float32", torch.float32, False, 2e-3),
        # TF32 rounds matmul inputs to 10 mantissa bits; baseline and provider round
        # differently, so they agree only to about fp16's level.
        Precision("tf32", torch.float32, True, 2e-2),
        Precision("bfloat16", torch.bfloat16, None, 6e-2),
        Precision("float16", torch.float16, None, 2e-2),
    )
}


def resolve_precisions(
    dtype: torch.dtype | str | Precision | Sequence[torch.dtype | str | Precision],
) -> list[Precision]:
    """Precisions from a dtype, a precision name, or a list of them (float32 = TF32 off)."""
    items = [dtype] if isinstance(dtype, (torch.dtype, str, Precision)) else list(dtype)
    out = []
    for item in items:
        if isinstance(item, Precision):
            out.append(item)
            continue
        name = str(item).removeprefix("torch.") if isinstance(item, torch.dtype) else item
        if name not in PRECISIONS:
            known = ", ".join(PRECISIONS)
            raise ValueError(f"dtype {item} is not benchmarked; expected one of {known}")
        out.append(PRECISIONS[name])
    if not out:
        raise ValueError(f"no dtype given; expected some of {', '.join(PRECISIONS)}")
    return list(dict.fromkeys(out))


@contextlib.contextmanager
def _tf32_switches(precision: Precision) -> Iterator[None]:
    """Set both TF32 switches for ``precision`` (float32 only) and restore them after."""
    if precision.tf32 is None:
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = precision.tf32
    torch.backends.cuda.matmul.allow_tf32 = precision.tf32
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


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
class Results:
    """Everything a check compares: one forward+backward's outputs and gradients."""

    out: Tensor  # [T, B, D*H]
    h_n: Tensor
    c_n: Tensor
    input_grad: Tensor  # [T, B, I]
    weight_grads: list[Tensor]


def collect_results(case: Case) -> Results:
    """Run ``case`` forward+backward once and collect every compared tensor."""
    out, h_n, c_n = case.forward_backward()
    input_grad = case.input_grad()
    weight_grads = [leaf.grad for leaf in case.leaves[1:]]
    if input_grad is None or any(g is None for g in weight_grads):
        raise RuntimeError(f"{case.provider}: backward left a gradient unset")
    return Results(
        case.padded(out).detach(),
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


def check_case(case: Case, expected: Results, tol: float) -> tuple[bool, float, str]:
    """Compare ``case`` with the baseline's results; returns (ok, worst error, what failed)."""
    got = collect_results(case)
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
    row: dict[str, object] = {**shape.as_dict(), "dtype": "float32", "provider": provider}
    row.update(
        {
            "mode": mode,
            "status": "ok",
            "detail": "",
            "backend": None,
            "median_ms": None,
            "q1_ms": None,
            "q3_ms": None,
            "min_ms": None,
            "us_per_step": None,
            "repeats": None,
            "peak_mem_bytes": None,
            "check_rel_err": None,
            "baseline": baseline_for(shape),
            "speedup": None,
        }
    )
    row.update(fields)
    return row


class _Progress:
    """Progress on stderr: a tqdm bar on a terminal, else one plain line per finished case.

    A carriage-return bar written to a file or a CI log floods it with partial lines, so
    without a terminal each (shape, precision) gets one line when it is done.
    """

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, 0, enabled
        self.start = time.perf_counter()
        self.bar = None
        if enabled and sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="case", file=sys.stderr, dynamic_ncols=True)
            except ImportError:
                pass

    def status(self, text: str) -> None:
        if self.bar is not None:
            self.bar.set_description_str(text)

    def case_done(self, label: str, rows: Sequence[dict[str, object]]) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
        elif self.enabled:
            counts: dict[str, int] = {}
            for r in rows:
                counts[str(r["status"])] = counts.get(str(r["status"]), 0) + 1
            summary = ", ".join(f"{n} {status}" for status, n in counts.items())
            elapsed = time.perf_counter() - self.start
            print(
                f"bench [{self.done}/{self.total}] {label}: {summary} rows ({elapsed:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_benchmarks(
    shapes: Sequence[Shape],
    providers: Iterable[str],
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | Precision | Sequence[torch.dtype | str | Precision] = torch.float32,
    modes: Sequence[str] = MODES,
    config: RunConfig | None = None,
    progress: bool = True,
    on_case: Callable[[list[dict[str, object]]], None] | None = None,
) -> list[dict[str, object]]:
    """Check and time every (precision, shape, provider, mode); returns one row per combination.

    ``dtype`` is a dtype, a precision name (``float32``, ``tf32``, ``bfloat16``...) or a list
    of them. Rows carry the shape, precision (``dtype``), provider, mode, status (``ok``,
    ``check failed``, ``unavailable``, ``not applicable`` or ``error``), times in
    milliseconds and per time step in microseconds, peak memory (fwd+bwd rows) and the
    speedup over the shape's nn.LSTM baseline measured in the same run. ``on_case`` is
    called with all rows so far after each (precision, shape), so a caller can save partial
    results of a run that may be cut short.
    """
    device = torch.device(device)
    config = config or RunConfig()
    providers = list(providers)
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    precisions = resolve_precisions(dtype)
    if device.type == "cpu":
        steady_cpu_allocator()
    rows: list[dict[str, object]] = []
    bar = _Progress(len(shapes) * len(precisions), progress)
    try:
        for precision in precisions:
            for shape in shapes:
                with _tf32_switches(precision):
                    new = _run_shape(shape, providers, device, precision, modes, config, bar)
                rows.extend(new)
                bar.case_done(f"{shape.id} {precision.name}", new)
                if on_case is not None:
                    on_case(rows)
    finally:
        bar.close()
    return rows


def _run_shape(
    shape: Shape,
    providers: list[str],
    device: torch.device,
    precision: Precision,
    modes: Sequence[str],
    config: RunConfig,
    bar: _Progress,
) -> list[dict[str, object]]:
    problem = make_problem(shape, device, precision.dtype, config.seed)
    baseline = baseline_for(shape)
    expected = collect_results(build_case(baseline, problem))
    done: dict[str, list[dict[str, object]]] = {}  # providers settled without timing
    ready: dict[str, tuple[Case, float | None, str]] = {}  # checked: (case, error, detail)
    for provider in providers:
        bar.status(f"{shape.id} {precision.name} check {provider}")
        outcome = _prepare(shape, provider, problem, expected, modes, precision)
        if isinstance(outcome, list):
            done[provider] = outcome
        else:
            ready[provider] = outcome
    timed: dict[tuple[str, str], dict[str, object]] = {}
    for mode in modes:
        bar.status(f"{shape.id} {precision.name} {mode} x{len(ready)}")
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
                dtype=precision.name,
                detail=detail,
                backend=case.backend_ran,
                median_ms=t.median * 1e3,
                q1_ms=t.q1 * 1e3,
                q3_ms=t.q3 * 1e3,
                min_ms=t.min * 1e3,
                us_per_step=t.median * 1e6 / shape.T,
                repeats=t.repeats,
                peak_mem_bytes=mem,
                check_rel_err=err,
            )
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
    expected: Results,
    modes: Sequence[str],
    precision: Precision,
) -> tuple[Case, float | None, str] | list[dict[str, object]]:
    """Build and check one provider: the checked case, or final rows saying why it is out."""

    def final(status: str, detail: str, **fields: object) -> list[dict[str, object]]:
        return [
            _row(shape, provider, m, dtype=precision.name, status=status, detail=detail, **fields)
            for m in modes
        ]

    device = problem.x.device
    if not applies_to(provider, shape):
        return final("not applicable", "needs variable lengths")
    why_not = provider_why_not(provider, device, precision.dtype, shape)
    if why_not is not None:
        return final("unavailable", why_not)
    try:
        case = build_case(provider, problem)
        if provider == BASELINE_FIXED and shape.variable:
            # nn.LSTM on a padded batch computes a different function (it runs through the
            # padding), so there is nothing to check; it is timed as the common shortcut.
            return case, None, "ignores lengths (not checked)"
        ok, err, detail = check_case(case, expected, precision.tolerance)
    except RuntimeError as exc:
        if design_of(provider) is None:
            return final("error", _one_line(exc))
        # A pinned Triton design that cannot serve this shape says so by raising.
        return final("unavailable", _one_line(exc))
    except Exception as exc:  # a provider that crashes is reported, not fatal to the run
        return final("error", _one_line(exc))
    if not ok:
        return final("check failed", detail, check_rel_err=err)
    return case, err, ""


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]
