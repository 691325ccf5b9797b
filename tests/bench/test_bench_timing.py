"""The benchmark timer and the peak-memory measurement."""

from __future__ import annotations

import gc
from collections import Counter

import pytest
import torch

from fastlstm.bench import timing as timing_module
from fastlstm.bench.timing import balanced_orders, measure_interleaved, peak_memory


def _measure_one(fn, device="cpu", **kwargs):
    return measure_interleaved({"fn": fn}, device, **kwargs)["fn"]


def test_counts_and_orders_statistics():
    calls = []
    timing = _measure_one(
        lambda: calls.append(1), warmup=2, repeats=4, budget_s=None, settle=1, settle_s=0
    )
    assert len(calls) == 2 + 4 * 2
    assert timing.repeats == 4 and len(timing.times) == 4
    assert timing.min <= timing.q1 <= timing.median <= timing.q3 <= max(timing.times)


def test_budget_stops_after_min_repeats():
    calls = []
    timing = _measure_one(
        lambda: calls.append(1),
        warmup=0,
        repeats=50,
        min_repeats=3,
        budget_s=1e-12,
        settle=0,
        settle_s=0,
    )
    assert timing.repeats == 3 and len(calls) == 3


def test_interleaved_rounds_follow_the_balanced_orders():
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in "abc"}
    timings = measure_interleaved(fns, warmup=0, repeats=4, budget_s=None, settle=0, settle_s=0)
    assert order == list("abcbcacabcba")
    assert {name: t.repeats for name, t in timings.items()} == {"a": 4, "b": 4, "c": 4}


@pytest.mark.parametrize("n", range(1, 9))
def test_balanced_orders_put_every_callable_after_every_other_equally_often(n):
    orders = balanced_orders(n)
    assert all(sorted(order) == list(range(n)) for order in orders)
    assert len(orders) == (n if n % 2 == 0 else 2 * n)
    follows = Counter((o[i - 1], o[i]) for o in orders for i in range(1, n))
    assert set(follows) == {(a, b) for a in range(n) for b in range(n) if a != b}
    assert len(set(follows.values())) <= 1  # each ordered pair equally often
    assert Counter(o[0] for o in orders) == Counter({i: len(orders) // n for i in range(n)})


def test_garbage_collection_is_paused_while_timing():
    seen = []
    measure_interleaved({"a": lambda: seen.append(gc.isenabled())}, warmup=0, repeats=2, settle_s=0)
    assert seen == [False] * 4 and gc.isenabled()


def test_each_timed_call_follows_an_untimed_call_of_the_same_callable():
    """The timed call never runs right after a different callable (its leftover state)."""
    order: list[str] = []
    fns = {name: (lambda n=name: order.append(n)) for name in "ab"}
    timings = measure_interleaved(fns, warmup=1, repeats=2, budget_s=None, settle=1, settle_s=0)
    assert order == list("ab" + "aabb" + "bbaa")
    assert {name: t.repeats for name, t in timings.items()} == {"a": 2, "b": 2}


def test_settling_lasts_settle_s_of_the_same_work(monkeypatch):
    """A cheap call is settled for ``settle_s`` seconds, not one call: its warm-up outlasts
    one call (see the timing module's docstring)."""
    order: list[str] = []

    def one_ms(fn, device):
        fn()
        return 1e-3

    monkeypatch.setattr(timing_module, "_time_once", one_ms)
    fns = {name: (lambda n=name: order.append(n)) for name in "ab"}
    measure_interleaved(fns, warmup=0, repeats=2, budget_s=None, settle=1, settle_s=4.5e-3)
    # Each timed call: five untimed 1 ms calls (>= 4.5 ms), then the timed one.
    assert order == list("a" * 6 + "b" * 6 + "b" * 6 + "a" * 6)


@pytest.mark.parametrize(
    "kwargs", [{"repeats": 0}, {"min_repeats": 0}, {"warmup": -1}], ids=lambda k: next(iter(k))
)
def test_bad_counts_raise(kwargs):
    with pytest.raises(ValueError, match="timing: expected repeats >= 1"):
        _measure_one(lambda: None, **kwargs)
    with pytest.raises(ValueError, match="expected settle >= 0"):
        _measure_one(lambda: None, settle=-1)
    with pytest.raises(ValueError, match="settle_s >= 0"):
        _measure_one(lambda: None, settle_s=-1.0)


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
