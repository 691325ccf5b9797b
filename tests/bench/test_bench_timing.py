"""The benchmark timer and the peak-memory measurement."""

from __future__ import annotations

import pytest
import torch

from fastlstm.bench.timing import measure_interleaved, peak_memory


def _measure_one(fn, device="cpu", **kwargs):
    return measure_interleaved({"fn": fn}, device, **kwargs)["fn"]


def test_counts_and_orders_statistics():
    calls = []
    timing = _measure_one(lambda: calls.append(1), warmup=2, repeats=4, budget_s=None, settle=1)
    assert len(calls) == 2 + 4 * 2
    assert timing.repeats == 4 and len(timing.times) == 4
    assert timing.min <= timing.q1 <= timing.median <= timing.q3 <= max(timing.times)


def test_budget_stops_after_min_repeats():
    calls = []
    timing = _measure_one(
        lambda: calls.append(1), warmup=0, repeats=50, min_repeats=3, budget_s=1e-12, settle=0
    )
    assert timing.repeats == 3 and len(calls) == 3


def test_interleaved_rounds_rotate_the_order():
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in "abc"}
    timings = measure_interleaved(fns, warmup=0, repeats=3, budget_s=None, settle=0)
    assert order == list("abcbcacab")
    assert {name: t.repeats for name, t in timings.items()} == {"a": 3, "b": 3, "c": 3}


def test_each_timed_call_follows_an_untimed_call_of_the_same_callable():
    """The timed call never runs right after a different callable (its leftover state)."""
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in "ab"}
    timings = measure_interleaved(fns, warmup=1, repeats=2, budget_s=None, settle=1)
    assert order == list("ab" + "aabb" + "bbaa")
    assert {name: t.repeats for name, t in timings.items()} == {"a": 2, "b": 2}


@pytest.mark.parametrize(
    "kwargs", [{"repeats": 0}, {"min_repeats": 0}, {"warmup": -1}], ids=lambda k: next(iter(k))
)
def test_bad_counts_raise(kwargs):
    with pytest.raises(ValueError, match="timing: expected repeats >= 1"):
        _measure_one(lambda: None, **kwargs)
    with pytest.raises(ValueError, match="expected settle >= 0"):
        _measure_one(lambda: None, settle=-1)


def test_cpu_peak_memory_sees_torch_allocations():
    size = 4 * 2**20  # a 4 MiB tensor allocated and freed inside the call

    def fn():
        x = torch.ones(size // 4, dtype=torch.float32)
        return float(x.sum())

    assert peak_memory(fn, "cpu") >= size
    assert peak_memory(lambda: None, "cpu") < 2**16


def test_peak_memory_rejects_other_devices():
    with pytest.raises(ValueError, match="unsupported device type 'meta'"):
        peak_memory(lambda: None, "meta")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_timer_and_peak_memory():
    size = 8 * 2**20
    timing = _measure_one(
        lambda: torch.empty(size, dtype=torch.uint8, device="cuda").fill_(1), "cuda", repeats=3
    )
    assert timing.repeats == 3 and timing.median > 0
    assert peak_memory(lambda: torch.empty(size, dtype=torch.uint8, device="cuda"), "cuda") >= size
