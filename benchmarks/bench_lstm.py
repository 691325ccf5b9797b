"""fastlstm against torch.nn.LSTM and a Python loop, forward and forward+backward.

Run ``pytest benchmarks/ --benchmark-only`` (options: ``--bench-shapes quick``,
``--bench-device cuda``, ``--bench-dtype bfloat16`` (or ``tf32``), ``--bench-providers ...``).
A thin entry point: problems, providers, checks and the environment record all come from
``fastlstm.bench`` (the harness ``fastlstm bench`` runs); only the timer is pytest-benchmark's.
Each
benchmark group is one shape and mode, so pytest-benchmark's table lists the providers
side by side. Every provider is first checked against nn.LSTM on the benchmark input and
fails instead of being timed when its results differ. Hardware, dtype, shape, versions,
the backend that ran and the peak memory of forward+backward go into ``extra_info``
(saved with ``--benchmark-json``).
"""

from __future__ import annotations

import pytest
import torch

from fastlstm.bench.env import environment
from fastlstm.bench.providers import (
    PROVIDERS,
    applies_to,
    baseline_for,
    build_case,
    default_providers,
    make_problem,
    provider_unavailable_reason,
)
from fastlstm.bench.runner import MODES, PRECISIONS, Precision, check_case, collect_results
from fastlstm.bench.shapes import parse_shapes
from fastlstm.bench.timing import MEMORY_METHODS, peak_memory

_problems: dict = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if {"shape", "provider", "mode"} <= set(metafunc.fixturenames):
        config = metafunc.config
        shapes = parse_shapes(config.getoption("--bench-shapes"))
        device = torch.device(config.getoption("--bench-device"))
        chosen = config.getoption("--bench-providers")
        providers = chosen.split(",") if chosen else list(default_providers(device))
        params = [
            pytest.param(shape, provider, mode, id=f"{shape.id}-{provider}-{mode}")
            for shape in shapes
            for mode in MODES
            for provider in providers
            if applies_to(provider, shape)
        ]
        metafunc.parametrize(("shape", "provider", "mode"), params)


@pytest.fixture(scope="session")
def device(pytestconfig) -> torch.device:
    return torch.device(pytestconfig.getoption("--bench-device"))


@pytest.fixture(scope="session")
def precision(pytestconfig) -> Precision:
    """The --bench-dtype precision, with its TF32 switches set for the session (float32)."""
    chosen = PRECISIONS[pytestconfig.getoption("--bench-dtype")]
    if chosen.tf32 is not None:
        torch.backends.cudnn.allow_tf32 = chosen.tf32
        torch.backends.cuda.matmul.allow_tf32 = chosen.tf32
    return chosen


def _problem(shape, device, dtype):
    """One problem and nn.LSTM's expected results per shape, shared by its benches."""
    key = (shape, device, dtype)
    if key not in _problems:
        _problems.clear()  # keep one shape's tensors alive at a time
        problem = make_problem(shape, device, dtype)
        _problems[key] = (problem, collect_results(build_case(baseline_for(shape), problem)))
    return _problems[key]


def test_lstm(benchmark, shape, provider, mode, device, precision):
    assert provider in PROVIDERS
    dtype = precision.dtype
    why_not = provider_unavailable_reason(provider, device, dtype, shape)
    if why_not is not None:
        pytest.skip(why_not)
    problem, expected = _problem(shape, device, dtype)
    case = build_case(provider, problem)
    err = None  # nn.LSTM on a padded variable-length batch computes another function
    if not (provider == "nn.LSTM-padded" and shape.variable):
        ok, err, detail = check_case(case, expected, precision.tolerance)
        if not ok:
            pytest.fail(f"{provider} on {shape.id}: {detail}; refusing to time it")
    fn = case.forward if mode == "fwd" else case.forward_backward
    if device.type == "cuda":
        # Synchronise inside the timed call so the clock sees the finished work.
        def timed():
            fn()
            torch.cuda.synchronize(device)
    else:
        timed = fn
    benchmark.group = f"{shape.id} {mode}"
    benchmark.extra_info.update(environment(device, precision.name))
    benchmark.extra_info.update(shape.as_dict())
    benchmark.extra_info.update(
        {"provider": provider, "mode": mode, "baseline": baseline_for(shape), "check_rel_err": err}
    )
    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)
    benchmark.extra_info["backend"] = case.backend_ran
    if mode == "fwd+bwd":
        benchmark.extra_info["peak_mem_bytes"] = peak_memory(fn, device)
        benchmark.extra_info["memory_method"] = MEMORY_METHODS[device.type]
