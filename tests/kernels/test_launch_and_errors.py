"""Launch settings, the reasons the kernels give for refusing a request, argument errors."""

from __future__ import annotations

import pytest
import torch

from fastlstm.kernels import (
    DESIGN_ENV,
    choose_design,
    dispatch,
    dot_precision,
    forced_design,
    launch,
    recurrence_forward,
    why_not,
)
from fastlstm.kernels.launch import batch_config, design_step_us

from helpers import triton_direction as lstm_direction


@pytest.mark.parametrize(
    ("B", "H", "P"),
    [(1, 1, 1), (3, 20, 20), (64, 128, 128), (64, 512, 512), (4096, 1024, 256)],
    ids=lambda v: str(v),
)
def test_batch_config_is_deterministic_and_dot_sized(B, H, P):
    cfg = batch_config(B, H, P)
    assert cfg == batch_config(B, H, P)
    for side in (cfg.block_b, cfg.block_h, cfg.block_k):
        assert side >= 16 and side & (side - 1) == 0, cfg
    assert cfg.num_warps in (4, 8)


def test_fp32_dots_are_exact_when_cudnn_tf32_is_off():
    # exact_fp32 (autouse) turned both switches off; the matmul switch alone changes nothing.
    assert dot_precision(torch.float32) == "ieee"
    torch.backends.cuda.matmul.allow_tf32 = True  # restored by exact_fp32
    assert dot_precision(torch.float32) == "ieee"


def test_fp32_dots_use_tf32_when_cudnn_tf32_is_on(tf32):
    # nn.LSTM's switch (cuDNN's, True by default), not the matmul one.
    assert dot_precision(torch.float32) == "tf32"
    torch.backends.cuda.matmul.allow_tf32 = False  # restored by exact_fp32
    assert dot_precision(torch.float32) == "tf32"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("tf32_on", [False, True], ids=["tf32-off", "tf32-on"])
def test_half_dots_ignore_the_switch(dtype, tf32_on):
    torch.backends.cudnn.allow_tf32 = tf32_on  # restored by exact_fp32
    assert dot_precision(dtype) == "tf32"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        pytest.param({"dtype": torch.float64}, "float64", id="float64"),
        pytest.param({"hidden": 4096}, "hidden size 4096 > 2048", id="H4096"),
        pytest.param({"proj": 3000}, "proj_size 3000 > 2048", id="P3000"),
        pytest.param({"device": torch.device("meta")}, "'meta'", id="meta"),
    ],
)
def test_why_not_names_the_problem(kwargs, needle):
    request = {"device": torch.device("cpu"), "dtype": torch.float32, "hidden": 64}
    request.update(kwargs)
    reason = why_not(**request)
    assert reason is not None and needle in reason


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = why_not(torch.device("cpu"), torch.float32, 64)
    assert reason is not None and "TRITON_INTERPRET" in reason


def _args(T=4, B=3, I=5, H=8):
    return {
        "x": torch.randn(T, B, I),
        "w_ih": torch.randn(4 * H, I),
        "w_hh": torch.randn(4 * H, H),
    }


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        pytest.param({"x": torch.randn(4, 5)}, "x must be 3-D", id="x-2d"),
        pytest.param({"w_hh": torch.randn(32, 7)}, "w_hh must have shape [32, 8]", id="w_hh"),
        pytest.param({"b_ih": torch.randn(31)}, "b_ih must have shape [32]", id="b_ih"),
        pytest.param({"h0": torch.randn(2, 8)}, "h0 must have shape [3, 8]", id="h0"),
        pytest.param(
            {"w_hh": torch.randn(32, 4), "w_hr": torch.randn(4, 9)},
            "w_hr must have shape [4, 8]",
            id="w_hr",
        ),
        pytest.param({"x": torch.randn(4, 3, 5).half()}, "expected torch.float16", id="dtype-mix"),
        pytest.param(
            {"lengths": torch.tensor([1, 0, 2])}, "between 1 and the sequence length 4", id="len0"
        ),
        pytest.param({"lengths": torch.tensor([1, 5, 2])}, "got values from 1 to 5", id="len>T"),
        pytest.param({"lengths": torch.tensor([1, 2])}, "1-D tensor of 3", id="len-shape"),
        pytest.param({"lengths": torch.tensor([1.0, 2, 3])}, "integer tensor", id="len-float"),
    ],
)
def test_bad_arguments_raise_value_error(change, needle):
    args = _args()
    args.update(change)
    with pytest.raises(ValueError) as err:
        lstm_direction(**args)
    assert needle in str(err.value)


def test_unservable_request_raises_runtime_error():
    args = {name: t.double() for name, t in _args().items()}
    with pytest.raises(RuntimeError, match="float64"):
        lstm_direction(**args)


@pytest.mark.parametrize("value", ["", "  "], ids=["empty", "blank"])
def test_empty_design_variable_means_the_rule(value, monkeypatch):
    monkeypatch.setenv(DESIGN_ENV, value)
    assert forced_design() is None


def test_design_variable_is_read_at_every_call(monkeypatch):
    monkeypatch.setenv(DESIGN_ENV, "step")
    assert forced_design() == "step"
    monkeypatch.setenv(DESIGN_ENV, "batch")
    assert forced_design() == "batch"
    monkeypatch.delenv(DESIGN_ENV)
    assert forced_design() is None


def test_unknown_design_raises_value_error(monkeypatch):
    monkeypatch.setenv(DESIGN_ENV, "warp")
    with pytest.raises(ValueError, match=r"FASTLSTM_TRITON_DESIGN='warp'.*persistent, step, batch"):
        lstm_direction(**_args())


@pytest.mark.parametrize("design", ["batch", "persistent", "step"])
def test_forced_design_that_cannot_serve_says_why(design, monkeypatch):
    monkeypatch.setenv(DESIGN_ENV, design)
    with pytest.raises(RuntimeError, match=rf"forces the '{design}' kernel design.*float64"):
        choose_design(torch.device("cpu"), torch.float64, 4, 16, 0)


def test_forced_persistent_refused_for_its_own_reason(monkeypatch):
    """A refusal that is the persistent design's alone (not the dtype/device checks all
    designs share) reaches the caller with the design's name and its reason, forced or
    pinned; the batch design still serves the call."""
    monkeypatch.setenv(DESIGN_ENV, "persistent")
    monkeypatch.setattr(
        launch,
        "plan_why_not",
        lambda *args: "needs 160 co-resident programs, this GPU has 132 SMs",
    )
    xp = torch.randn(3, 2, 64)
    w_hh, h0, c0 = torch.randn(64, 16), torch.zeros(2, 16), torch.zeros(2, 16)
    args = (xp, w_hh, None, h0, c0, None, False)
    with pytest.raises(RuntimeError, match=r"'persistent' kernel design.*160 co-resident"):
        recurrence_forward(*args)
    monkeypatch.delenv(DESIGN_ENV)
    with pytest.raises(RuntimeError, match=r"persistent LSTM kernels cannot.*160 co-resident"):
        recurrence_forward(*args, designs=("persistent",))
    monkeypatch.setenv(DESIGN_ENV, "batch")
    assert recurrence_forward(*args)[0].shape == (3, 2, 16)


def test_rule_uses_the_batch_design_under_the_interpreter(monkeypatch):
    monkeypatch.delenv(DESIGN_ENV, raising=False)
    design, reason = choose_design(torch.device("cpu"), torch.float32, 64, 256, 0)
    assert design == "batch" and "interpreter" in reason


def test_unpinned_designs_fall_back_on_a_launch_failure(monkeypatch):
    """A design that fails to launch (here: OutOfResources) hands the call to the next one
    with one warning naming the cause, and is not tried again for that configuration."""
    from triton.runtime.errors import OutOfResources

    from fastlstm.kernels import persistent

    monkeypatch.setattr(dispatch, "_FAILED", {})
    calls = []

    def out_of_resources(*args, **kwargs):
        calls.append(1)
        raise OutOfResources(262144, 232448, "shared memory")

    monkeypatch.setattr(persistent, "persistent_forward", out_of_resources)
    xp = torch.randn(3, 2, 64)
    w_hh, h0, c0 = torch.randn(64, 16), torch.zeros(2, 16), torch.zeros(2, 16)
    args = (xp, w_hh, None, h0, c0, None, False)
    with pytest.warns(RuntimeWarning, match=r"'persistent'.*OutOfResources.*shared memory"):
        out = recurrence_forward(*args, designs=("persistent", "batch"))
    assert out[0].shape == (3, 2, 16) and calls == [1]
    recurrence_forward(*args, designs=("persistent", "batch"))
    assert calls == [1]
    with pytest.raises(OutOfResources):  # a pinned design never falls back
        recurrence_forward(*args, designs=("persistent",))
    monkeypatch.setattr(persistent, "step_forward", out_of_resources)
    with (
        pytest.warns(RuntimeWarning, match="'step'"),
        pytest.raises(dispatch.KernelLaunchError, match=r"persistent: .*step: .*shared memory"),
    ):
        recurrence_forward(*args, designs=("persistent", "step"))


def test_measured_table_decides_auto_on_a_gpu(monkeypatch):
    """``measured_designs`` reads the committed table for the GPU it runs on: the designs
    measured faster than cuDNN near the call, fastest first; nothing off a GPU."""
    from fastlstm.kernels import measured

    table = {
        "device": "NVIDIA H200",
        "torch": "2.11.0",
        "triton": "3.6.0",
        "date": "2026-12-06",
        "entries": [
            {"precision": "bf16", "B": 64, "H": 256, "proj": 0,
             "ratios": {"persistent": 1.6, "step": 0.4, "batch": 1.1}},
        ],
    }  # fmt: skip
    found = measured.lookup("NVIDIA H200", "3.6.1", "bf16", 100, 200, 0, (table,))
    assert found is not None and found[0]["persistent"] == 1.6
    assert measured.lookup("NVIDIA H100", "3.6.0", "bf16", 64, 256, 0, (table,)) is None
    assert measured.lookup("NVIDIA H200", "3.9.0", "bf16", 64, 256, 0, (table,)) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "tf32", 64, 256, 0, (table,)) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "bf16", 512, 256, 0, (table,)) is None
    assert measured.lookup("NVIDIA H200", "3.6.0", "bf16", 64, 256, 64, (table,)) is None
    assert measured_designs_off_gpu() == ()


def measured_designs_off_gpu():
    return dispatch.measured_designs(torch.device("cpu"), torch.float32, 64, 256, 0)[0]


@pytest.mark.parametrize(
    ("dtype", "H", "P", "expected"),
    [
        pytest.param(torch.float32, 128, 0, "persistent", id="fp32-H128"),
        pytest.param(torch.float32, 256, 0, "persistent", id="fp32-H256"),
        pytest.param(torch.bfloat16, 512, 0, "persistent", id="bf16-H512"),
        pytest.param(torch.bfloat16, 64, 0, "batch", id="bf16-H64"),
    ],
)
def test_latency_model_at_benchmark_shapes(dtype, H, P, expected):
    """The model behind the rule (docs/kernels.md): the batch-tiled design's step grows with
    the W_hh bytes each program streams, the persistent one's barely with H."""
    times = {d: design_step_us(d, dtype, 64, H, P) for d in launch.DESIGNS}
    assert min(times, key=times.get) == expected, times
    assert times["step"] > times["persistent"]
