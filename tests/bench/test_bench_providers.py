"""Providers and the runner: every competitor computes nn.LSTM's results or gets no time."""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm import backends
from fastlstm.bench import providers, runner
from fastlstm.bench.providers import (
    CONTROL,
    PROVIDERS,
    build_case,
    default_providers,
    make_problem,
    provider_why_not,
    python_loop_lstm,
)
from fastlstm.bench.runner import RunConfig, run_benchmarks
from fastlstm.bench.shapes import Shape, parse_shape
from fastlstm.runtime import triton_interpreting

SHAPES = [
    pytest.param(parse_shape("T7-B3-I5-H6"), id="T7-B3-I5-H6"),
    pytest.param(parse_shape("T9-B4-I3-H5-var2"), id="T9-B4-I3-H5-var2"),
    pytest.param(parse_shape("T8-B3-I4-H5-L2-bidir-var1"), id="T8-B3-I4-H5-L2-bidir-var1"),
]
FAST = RunConfig(warmup=0, repeats=1, min_repeats=1, budget_s=None, memory=False)


@pytest.mark.parametrize("shape", SHAPES)
def test_python_loop_matches_nn_lstm(shape: Shape):
    problem = make_problem(shape, torch.device("cpu"), torch.float64)
    ref, x, lengths = problem.reference, problem.x, problem.lengths
    out, h_n, c_n = python_loop_lstm(
        x, ref._flat_weights, shape.layers, shape.bidirectional, lengths
    )
    if lengths is None:
        want, (want_h, want_c) = ref(x)
    else:
        packed, (want_h, want_c) = ref(pack_padded_sequence(x, lengths, enforce_sorted=False))
        want = pad_packed_sequence(packed, total_length=shape.T)[0]
    torch.testing.assert_close(out, want)
    torch.testing.assert_close(h_n, want_h)
    torch.testing.assert_close(c_n, want_c)


@pytest.mark.parametrize("shape", SHAPES)
def test_every_cpu_provider_passes_its_check(shape: Shape):
    rows = run_benchmarks(
        [shape],
        default_providers(torch.device("cpu")),
        "cpu",
        torch.float32,
        config=FAST,
        progress=False,
    )
    statuses = {r["provider"]: r["status"] for r in rows}
    expected_na = set() if shape.variable else {"fastlstm-packed", "nn.LSTM-packed"}
    assert {p for p, s in statuses.items() if s == "not applicable"} == expected_na
    assert all(s == "ok" for p, s in statuses.items() if p not in expected_na), statuses
    baseline = "nn.LSTM-packed" if shape.variable else "nn.LSTM-padded"
    for r in rows:
        if r["provider"] == baseline:
            assert r["speedup"] == pytest.approx(1.0)
        if r["status"] == "ok":
            assert r["median_ms"] > 0 and r["speedup"] > 0
    ran = {r["provider"]: r["backend"] for r in rows if r["status"] == "ok"}
    assert ran["fastlstm-reference"] == "reference" and ran["fastlstm-aten"] == "aten"


def test_a_wrong_provider_gets_no_time_and_no_speedup(monkeypatch):
    def broken_build(name, problem):
        case = build_case(name, problem)
        if name == "fastlstm-reference":
            with torch.no_grad():
                case.module.weight_hh_l0.add_(0.05)
        return case

    monkeypatch.setattr(runner, "build_case", broken_build)
    rows = run_benchmarks(
        [parse_shape("T6-B2-I3-H4")],
        ["fastlstm-reference", "nn.LSTM-padded"],
        config=FAST,
        progress=False,
    )
    bad = [r for r in rows if r["provider"] == "fastlstm-reference"]
    assert [r["status"] for r in bad] == ["check failed", "check failed"]
    assert all(r["median_ms"] is None and r["speedup"] is None for r in bad)
    assert "differs from nn.LSTM" in bad[0]["detail"]


def test_memory_is_measured_on_fwd_bwd_rows_only():
    config = RunConfig(warmup=0, repeats=1, min_repeats=1, budget_s=None, memory=True)
    rows = run_benchmarks(
        [parse_shape("T5-B2-I3-H4")], ["nn.LSTM-padded"], config=config, progress=False
    )
    mem = {r["mode"]: r["peak_mem_bytes"] for r in rows}
    assert mem["fwd"] is None and mem["fwd+bwd"] > 0


def test_triton_only_by_default_on_cuda(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    cpu = torch.device("cpu")
    triton = {p for p in PROVIDERS if p.startswith("fastlstm-triton")}
    assert triton == {"fastlstm-triton", *(f"fastlstm-triton-{d}" for d in backends.DESIGNS)}
    for name in triton:
        assert "TRITON_INTERPRET=1 is not set" in provider_why_not(name, cpu)
    assert set(default_providers(cpu)) == set(PROVIDERS) - triton
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert provider_why_not("fastlstm-triton", cpu) is None
    assert set(default_providers(cpu)) == set(PROVIDERS) - triton  # the interpreter is slow


def test_packed_providers_refuse_fixed_shapes():
    problem = make_problem(parse_shape("T4-B2-I3-H4"), torch.device("cpu"), torch.float32)
    with pytest.raises(ValueError, match="needs a variable-length shape"):
        build_case("nn.LSTM-packed", problem)
    with pytest.raises(ValueError, match="unknown provider"):
        provider_why_not("cudnn", torch.device("cpu"))


def test_unknown_mode_and_dtype_raise():
    shape = [parse_shape("T4-B2-I3-H4")]
    with pytest.raises(ValueError, match="unknown mode 'bwd'"):
        run_benchmarks(shape, ["nn.LSTM-padded"], modes=["bwd"], progress=False)
    with pytest.raises(ValueError, match="is not benchmarked"):
        run_benchmarks(shape, ["nn.LSTM-padded"], dtype=torch.int32, progress=False)


def test_cases_share_weights_with_the_reference():
    problem = make_problem(parse_shape("T4-B2-I3-H4-bidir"), torch.device("cpu"), torch.float32)
    case = build_case("fastlstm-auto", problem)
    for a, b in zip(case.module.parameters(), problem.reference.parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(problem.reference, nn.LSTM)


@pytest.mark.skipif(
    not torch.cuda.is_available() and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1",
)
def test_triton_provider_passes_its_check():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    rows = run_benchmarks([parse_shape("T5-B2-I3-H4-bidir-var2")], ["fastlstm-triton"], device,
                          config=FAST, progress=False)  # fmt: skip
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["backend"] for r in rows} == {"triton"}


def test_backend_that_cannot_serve_is_unavailable(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    rows = run_benchmarks([parse_shape("T4-B2-I3-H4")], ["fastlstm-triton"], "cpu",
                          torch.bfloat16, config=FAST, progress=False)  # fmt: skip
    assert {r["status"] for r in rows} == {"unavailable"}
    assert "cannot serve" in rows[0]["detail"]


@pytest.mark.parametrize("text", ["T4-B2-I3-H4", "T5-B3-I3-H4-var2"])
def test_control_is_an_independent_copy_of_the_baseline(text):
    shape = parse_shape(text)
    problem = make_problem(shape, torch.device("cpu"), torch.float64)
    control = build_case(CONTROL, problem)
    baseline = build_case(runner.baseline_for(shape), problem)
    assert control.provider == CONTROL and control.module is not baseline.module
    assert type(control.module) is type(baseline.module)
    for a, b in zip(control.module.parameters(), baseline.module.parameters(), strict=True):
        assert torch.equal(a, b) and a is not b
    want, got = runner.collect_results(baseline), runner.collect_results(control)
    torch.testing.assert_close(got.out, want.out, rtol=0, atol=0)
    torch.testing.assert_close(got.input_grad, want.input_grad, rtol=0, atol=0)


@pytest.mark.skipif(
    not torch.cuda.is_available() and not triton_interpreting(),
    reason="needs CUDA or TRITON_INTERPRET=1",
)
def test_design_provider_runs_only_its_design_forward_and_backward(monkeypatch):
    from fastlstm.kernels import batch, persistent

    environ = dict(os.environ)
    ran = []
    for module, name in [(persistent, "step_forward"), (persistent, "step_backward"),
                         (persistent, "persistent_forward"), (persistent, "persistent_backward"),
                         (batch, "forward"), (batch, "backward")]:  # fmt: skip
        label, real = f"{module.__name__.rsplit('.', 1)[-1]}.{name}", getattr(module, name)

        def spy(*args, _real=real, _label=label, **kwargs):
            ran.append(_label)
            return _real(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    problem = make_problem(parse_shape("T4-B2-I3-H4"), device, torch.float32)
    case = build_case("fastlstm-triton-step", problem)
    assert case.module.backend == "triton" and case.module.design == "step"
    case.forward_backward()
    assert ran == ["persistent.step_forward", "persistent.step_backward"]
    assert dict(os.environ) == environ  # a parameter of the module: nothing global flipped


def test_availability_asks_the_backend_seam_with_batch_and_design(monkeypatch):
    asked = []

    def select_backend(*args, **kwargs):
        asked.append((args, kwargs))
        raise RuntimeError("the persistent design cannot run this call: too wide")

    monkeypatch.setattr(providers, "select_backend", select_backend)
    shape = parse_shape("T4-B7-I3-H48")
    reason = provider_why_not(
        "fastlstm-triton-persistent", torch.device("cpu"), torch.float16, shape
    )
    assert reason == "the persistent design cannot run this call: too wide"
    (args, kwargs) = asked[0]
    assert args == ("triton", torch.device("cpu"), torch.float16, 48)
    assert kwargs == {"batch_size": 7, "design": "persistent"}
    provider_why_not("fastlstm-aten", torch.device("cpu"))
    assert asked[1][1] == {"batch_size": 1, "design": None}


def _failing_build(message):
    def build(name, problem):
        case = build_case(name, problem)
        if name != "nn.LSTM-padded":

            def call():
                raise RuntimeError(message)

            case.call = call
        return case

    return build


def test_a_design_that_cannot_serve_is_unavailable_other_errors_are_errors(monkeypatch):
    monkeypatch.setattr(runner, "build_case", _failing_build("the step design cannot run this"))
    monkeypatch.setattr(runner, "provider_why_not", lambda *args: None)
    rows = run_benchmarks([parse_shape("T4-B2-I3-H4")],
                          ["nn.LSTM-padded", "fastlstm-triton-step", "fastlstm-triton"],
                          config=FAST, progress=False)  # fmt: skip
    status = {r["provider"]: (r["status"], r["detail"]) for r in rows}
    assert status["fastlstm-triton-step"] == (
        "unavailable",
        "RuntimeError: the step design cannot run this",
    )
    assert status["fastlstm-triton"][0] == "error"
    assert status["nn.LSTM-padded"][0] == "ok"


def test_each_precision_sets_the_tf32_switches_and_restores_them(monkeypatch):
    seen = {}

    def build(name, problem):
        case = build_case(name, problem)
        call = case.call

        def spy():
            flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
            seen.setdefault(problem.x.dtype, set()).add(flags)
            return call()

        case.call = spy
        return case

    monkeypatch.setattr(runner, "build_case", build)
    before = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    rows = run_benchmarks([parse_shape("T4-B2-I3-H4")], ["nn.LSTM-padded", CONTROL], "cpu",
                          ["tf32", "float64"], config=FAST, progress=False)  # fmt: skip
    assert {r["dtype"] for r in rows} == {"tf32", "float64"}
    assert all(r["status"] == "ok" and r["speedup"] for r in rows)
    after = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    assert after == before
    assert seen[torch.float32] == {(True, True)}
    assert seen[torch.float64] == {before}  # not float32: the switches are left alone
    rows = run_benchmarks([parse_shape("T4-B2-I3-H4")], ["nn.LSTM-padded"], "cpu",
                          torch.float32, config=FAST, progress=False)  # fmt: skip
    assert rows[0]["dtype"] == "float32" and seen[torch.float32] == {(True, True), (False, False)}


def test_progress_without_a_terminal_is_one_plain_line_per_case(capsys):
    shapes = [parse_shape("T4-B2-I3-H4"), parse_shape("T5-B2-I3-H4")]
    run_benchmarks(shapes, ["nn.LSTM-padded"], config=FAST, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("bench [1/2] T4-B2-I3-H4 float32: 2 ok rows")
