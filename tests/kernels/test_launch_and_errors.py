"""Launch settings, the reasons the kernels give for refusing a request, argument errors."""

from __future__ import annotations

import pytest
import torch

from fastlstm.kernels import lstm_direction, recurrence_config, unsupported_reason
from fastlstm.kernels.launch import dot_precision


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
