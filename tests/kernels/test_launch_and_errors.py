"""Launch settings, the reasons the kernels give for refusing a request, argument errors."""

from __future__ import annotations

import pytest
import torch

from fastlstm.kernels import launch, lstm, lstm_direction, recurrence_config, unsupported_reason
from fastlstm.kernels.launch import (
    DESIGN_ENV,
    choose_design,
    design_step_us,
    dot_precision,
    forced_design,
)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize(
    ("B", "H", "P"),
    [(1, 1, 1), (3, 20, 20), (64, 128, 128), (64, 512, 512), (4096, 1024, 256)],
    ids=lambda v: str(v),
)
def test_recurrence_config_is_deterministic_and_dot_sized(B, H, P, dtype):
    cfg = recurrence_config(B, H, P, dtype)
    assert cfg == recurrence_config(B, H, P, dtype)
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
        pytest.param({"hidden_size": 4096}, "hidden size 4096 > 2048", id="H4096"),
        pytest.param({"proj_size": 3000}, "proj_size 3000 > 2048", id="P3000"),
        pytest.param({"device": torch.device("meta")}, "'meta'", id="meta"),
    ],
)
def test_unsupported_reason_names_the_problem(kwargs, needle):
    request = {"device": torch.device("cpu"), "dtype": torch.float32, "hidden_size": 64}
    request.update(kwargs)
    reason = unsupported_reason(**request)
    assert reason is not None and needle in reason


def test_cpu_needs_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = unsupported_reason(torch.device("cpu"), torch.float32, 64)
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
        pytest.param({"lengths": torch.tensor([1, 0, 2])}, "must lie in [1, T=4]", id="len0"),
        pytest.param({"lengths": torch.tensor([1, 5, 2])}, "got values in [1, 5]", id="len>T"),
        pytest.param({"lengths": torch.tensor([1, 2])}, "shape [3]", id="len-shape"),
        pytest.param({"lengths": torch.tensor([1.0, 2, 3])}, "int32/int64", id="len-float"),
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
    with pytest.raises(ValueError, match=r"FASTLSTM_TRITON_DESIGN='warp'.*batch, persistent, step"):
        lstm_direction(**_args())


@pytest.mark.parametrize("design", ["batch", "persistent", "step"])
def test_forced_design_that_cannot_serve_says_why(design, monkeypatch):
    monkeypatch.setenv(DESIGN_ENV, design)
    with pytest.raises(RuntimeError, match=rf"forces the '{design}' kernel design.*float64"):
        choose_design(torch.device("cpu"), torch.float64, 4, 16, 0, False)


def test_forced_persistent_refused_for_its_own_reason(monkeypatch):
    """A refusal that is the persistent design's alone (not the dtype/device checks all
    designs share) reaches the caller with the design's name and its reason."""
    from fastlstm.kernels import persistent

    monkeypatch.setenv(DESIGN_ENV, "persistent")
    monkeypatch.setattr(
        persistent,
        "persistent_unsupported_reason",
        lambda design, *args: "needs 160 co-resident programs, this GPU has 132 SMs",
    )
    xp = torch.randn(3, 2, 64)
    w_hh, h0, c0 = torch.randn(64, 16), torch.zeros(2, 16), torch.zeros(2, 16)
    with pytest.raises(RuntimeError, match=r"'persistent' kernel design.*160 co-resident"):
        lstm.lstm_recurrence_forward(xp, w_hh, None, h0, c0, None, False)
    monkeypatch.setenv(DESIGN_ENV, "batch")  # the batch design still serves the call
    assert lstm.lstm_recurrence_forward(xp, w_hh, None, h0, c0, None, False)[0].shape == (3, 2, 16)


def test_rule_uses_the_batch_design_under_the_interpreter(monkeypatch):
    monkeypatch.delenv(DESIGN_ENV, raising=False)
    design, reason = choose_design(torch.device("cpu"), torch.float32, 64, 256, 0, True)
    assert design == "batch" and "interpreter" in reason


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
