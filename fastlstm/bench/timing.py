"""Timing and peak memory of one benchmark call.

Times are wall-clock per call, median over repeats after warmup. On CUDA each repeat is
bracketed by CUDA events and the device is synchronised before the clock is read, so
asynchronous launches are never mistaken for finished work. Peak memory is measured in a
separate, untimed call because the CPU measurement needs the profiler, which slows calls.

Every timed call comes right after untimed calls of the same callable (``settle``): the
calls after *different* work, or after any pause, run slow for about a millisecond of work.
Measured on a 2-core EPYC, one thread, ``nn.LSTM`` on ``T100-B1-I64-H64`` (medians of 50),
the 1st to 5th forward calls after the reference provider's forward took 0.39, 0.31, 0.28,
0.29 and 0.28 ms, against 0.25 ms after itself; after a 5 ms sleep 0.60, 0.35, 0.32, 0.28
ms; forward+backward after the reference's forward+backward 1.31, 1.03, 0.96, 0.92 ms
against 0.87 ms. With one settle call the timed call still paid 5-20 % for its
predecessor, so each provider's timed calls read slower the more often it followed the
Python-loop reference (an identical control listed after it read 0.98-1.15x its
baseline, mean 1.05x, and 1.11-1.13x in CI); settling for at least ``SETTLE_S`` of the same
work brought it to 1.00x. Python's cyclic garbage collector
is paused while timing (as ``timeit`` does), so a collection one provider's allocations
trigger never lands in another provider's call.
"""

from __future__ import annotations

import contextlib
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = [
    "MEMORY_METHODS",
    "SETTLE_CALLS",
    "SETTLE_S",
    "Timing",
    "balanced_orders",
    "measure_interleaved",
    "peak_memory",
]

# Before each timed call, untimed calls of the same callable: at least SETTLE_CALLS of them,
# and more until SETTLE_S seconds are spent (see the module docstring).
SETTLE_CALLS = 1
SETTLE_S = 5e-3

# What the peak-memory figure means on each device type (also written into the results).
MEMORY_METHODS = {
    "cuda": "torch.cuda.max_memory_allocated during the call, minus what was allocated before",
    "cpu": "peak of the running total of torch CPU allocations minus frees during the call "
    "(torch.profiler profile_memory events); tensors alive before the call are not counted",
}


@dataclass(frozen=True)
class Timing:
    """Summary of repeated calls, in seconds; ``times`` keeps every repeat."""

    median: float
    q1: float
    q3: float
    min: float
    repeats: int
    times: tuple[float, ...]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds for one call; on CUDA between two events, after the work has finished."""
    if device.type == "cuda":
        start_ev = torch.cuda.Event(enable_timing=True)
        end_ev = torch.cuda.Event(enable_timing=True)
        start_ev.record()
        fn()
        end_ev.record()
        end_ev.synchronize()
        return start_ev.elapsed_time(end_ev) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _summary(times: list[float]) -> Timing:
    quart = statistics.quantiles(times, n=4) if len(times) > 1 else [times[0]] * 3
    return Timing(
        median=statistics.median(times),
        q1=quart[0],
        q3=quart[2],
        min=min(times),
        repeats=len(times),
        times=tuple(times),
    )


def _check_counts(warmup: int, repeats: int, min_repeats: int) -> None:
    if repeats < 1 or min_repeats < 1 or warmup < 0:
        raise ValueError(
            f"timing: expected repeats >= 1, min_repeats >= 1 and warmup >= 0, got "
            f"repeats={repeats}, min_repeats={min_repeats}, warmup={warmup}"
        )


def measure_interleaved(
    fns: dict[str, Callable[[], object]],
    device: torch.device | str = "cpu",
    *,
    warmup: int = 1,
    repeats: int = 5,
    min_repeats: int = 3,
    budget_s: float | None = None,
    settle: int = SETTLE_CALLS,
    settle_s: float = SETTLE_S,
) -> dict[str, Timing]:
    """Time several callables side by side: each round times every one once, in turn.

    On a shared machine the load changes from second to second; interleaving spreads those
    changes over all competitors alike, so the ratio of two medians stays meaningful even
    when the absolute times wander. Each timed call follows untimed calls of the same
    callable, at least ``settle`` of them and at least ``settle_s`` seconds of them, so it
    runs warm whatever ran before it (see the module docstring), and the order changes
    every round so that each callable follows every other equally often
    (:func:`balanced_orders`). ``budget_s`` is per callable and counts the settle calls:
    rounds stop once the time spent exceeds ``budget_s * len(fns)`` and ``min_repeats``
    rounds ran.
    """
    device = torch.device(device)
    _check_counts(warmup, repeats, min_repeats)
    if settle < 0 or settle_s < 0:
        raise ValueError(
            f"timing: expected settle >= 0 and settle_s >= 0, got settle={settle}, "
            f"settle_s={settle_s}"
        )
    names = list(fns)
    if not names:
        return {}
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _sync(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    spent = 0.0
    orders = balanced_orders(len(names))
    with _gc_paused():
        for round_ in range(repeats):
            for name in (names[i] for i in orders[round_ % len(orders)]):
                spent += _settle(fns[name], device, settle, settle_s)
                elapsed = _time_once(fns[name], device)
                times[name].append(elapsed)
                spent += elapsed
            if budget_s and spent >= budget_s * len(names) and round_ + 1 >= min_repeats:
                break
    return {name: _summary(ts) for name, ts in times.items()}


def _settle(fn: Callable[[], object], device: torch.device, calls: int, seconds: float) -> float:
    """Untimed calls of ``fn`` until ``calls`` ran and ``seconds`` passed; returns the time."""
    spent, done = 0.0, 0
    while done < calls or spent < seconds:
        spent += _time_once(fn, device)
        done += 1
    return spent


def balanced_orders(n: int) -> list[list[int]]:
    """Orders of ``n`` callables in which each one follows every other equally often.

    A Williams design (the crossover-trial layout balanced for carry-over): ``n`` orders for
    even ``n``, ``2n`` for odd. A plain rotation keeps every callable behind the same
    neighbour in every round, so whatever that neighbour leaves behind biases one callable
    only; here each callable comes first once per ``n`` orders as well.
    """
    if n < 1:
        return [[]]
    first, low, high = [0], 1, n - 1
    while len(first) < n:
        first.append(low)
        low += 1
        if len(first) < n:
            first.append(high)
            high -= 1
    orders = [[(i + shift) % n for i in first] for shift in range(n)]
    if n % 2:
        orders += [order[::-1] for order in orders]
    return orders


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Collect garbage first, then keep Python's cyclic collector off while timing.

    As ``timeit`` does: a collection is triggered by whoever allocated most (the Python-loop
    provider builds thousands of autograd nodes) but pauses whichever call happens to run.
    """
    enabled = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """Silence the profiler's native start/stop log lines, which bypass ``sys.stderr``."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), fd)
            yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)


def _cpu_peak_bytes(fn: Callable[[], object]) -> int:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with (
        _quiet_native_stderr(),
        profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof,
    ):
        fn()
    # Memory events carry signed sizes (allocation > 0, free < 0); only CPU ones count here.
    events = [
        e
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == DeviceType.CPU
    ]
    events.sort(key=lambda e: e.start_ns())
    total = peak = 0
    for event in events:
        total += event.nbytes()
        peak = max(peak, total)
    return peak


def peak_memory(fn: Callable[[], object], device: torch.device | str = "cpu") -> int:
    """Peak bytes allocated by ``fn()`` beyond what was already allocated (see MEMORY_METHODS)."""
    device = torch.device(device)
    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    if device.type == "cpu":
        return _cpu_peak_bytes(fn)
    raise ValueError(f"peak_memory: unsupported device type {device.type!r}; expected cpu or cuda")
