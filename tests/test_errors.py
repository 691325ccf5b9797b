"""Bad input gets a clear error naming what was wrong and what was expected."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm


@pytest.fixture
def lstm():
    return fastlstm.LSTM(5, 7, num_layers=2)


@pytest.mark.parametrize(
    ("make_call", "error", "match"),
    [
        pytest.param(
            lambda m: m(torch.randn(3, 2, 4)), RuntimeError, "Expected 5, got 4", id="feature-size"
        ),
        pytest.param(
            lambda m: m(torch.randn(3, 2, 2, 5)), ValueError, "2D or 3D, got 4D", id="rank-4"
        ),
        pytest.param(lambda m: m(torch.randn(5)), ValueError, "2D or 3D, got 1D", id="rank-1"),
        pytest.param(
            lambda m: m(torch.randn(3, 2, 5).double()),
            ValueError,
            r"input dtype \(torch.float64\) does not match weight dtype",
            id="dtype",
        ),
        pytest.param(
            lambda m: m(torch.randint(0, 3, (3, 2, 5))),
            ValueError,
            "expected a floating-point tensor, got dtype torch.int64",
            id="int-input",
        ),
        pytest.param(
            lambda m: m(torch.randn(3, 2, 5), torch.randn(2, 2, 7)),
            ValueError,
            "tuple .h_0, c_0. of two tensors, got a single tensor",
            id="hx-lone-tensor",
        ),
        pytest.param(
            lambda m: m(torch.randn(3, 2, 5), (torch.randn(1, 2, 7), torch.randn(2, 2, 7))),
            RuntimeError,
            r"Expected hidden\[0\] size \(2, 2, 7\), got \[1, 2, 7\]",
            id="h0-shape",
        ),
        pytest.param(
            lambda m: m(torch.randn(3, 2, 5), (torch.randn(2, 2, 7), torch.randn(2, 3, 7))),
            RuntimeError,
            r"Expected hidden\[1\] size \(2, 2, 7\), got \[2, 3, 7\]",
            id="c0-shape",
        ),
        pytest.param(
            lambda m: m(torch.randn(3, 5), (torch.randn(2, 2, 7), torch.randn(2, 2, 7))),
            RuntimeError,
            "unbatched 2-D input, hx and cx should also be 2-D",
            id="unbatched-hx-3d",
        ),
        pytest.param(
            lambda m: m(
                torch.randn(3, 2, 5), (torch.randn(2, 2, 7).double(), torch.randn(2, 2, 7))
            ),
            ValueError,
            "hx.0. dtype",
            id="hx-dtype",
        ),
        pytest.param(
            lambda m: m(torch.randn(0, 2, 5)),
            RuntimeError,
            "sequence length to be larger than 0",
            id="T0",
        ),
        pytest.param(
            lambda m: m(torch.randn(4, 2, 5), lengths=torch.tensor([4, 0])),
            ValueError,
            "between 1 and the sequence length 4, got values from 0",
            id="length-zero",
        ),
        pytest.param(
            lambda m: m(torch.randn(4, 2, 5), lengths=torch.tensor([-1, 2])),
            ValueError,
            "between 1 and the sequence length 4",
            id="length-negative",
        ),
        pytest.param(
            lambda m: m(torch.randn(4, 2, 5), lengths=torch.tensor([5, 2])),
            ValueError,
            "got values from 2 to 5",
            id="length-too-long",
        ),
        pytest.param(
            lambda m: m(torch.randn(4, 2, 5), lengths=torch.tensor([4, 2, 1])),
            ValueError,
            r"1-D tensor of 2 sequence lengths.*got shape \(3,\)",
            id="lengths-batch",
        ),
        pytest.param(
            lambda m: m(torch.randn(4, 2, 5), lengths=torch.tensor([4.0, 2.0])),
            ValueError,
            "integer tensor, got dtype torch.float32",
            id="lengths-float",
        ),
        pytest.param(
            lambda m: m(
                pack_padded_sequence(torch.randn(4, 2, 5), [4, 2]), lengths=torch.tensor([4, 2])
            ),
            ValueError,
            "already carries its lengths",
            id="packed-and-lengths",
        ),
        pytest.param(
            lambda m: m([1, 2, 3]),
            TypeError,
            "Tensor or a PackedSequence, got list",
            id="input-list",
        ),
    ],
)
def test_bad_input(lstm, make_call, error, match):
    with pytest.raises(error, match=match):
        make_call(lstm)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        pytest.param(
            dict(proj_size=7), "proj_size has to be smaller than hidden_size", id="proj-eq-hidden"
        ),
        pytest.param(dict(proj_size=-1), "positive integer or zero", id="proj-negative"),
        pytest.param(dict(dropout=1.5), "dropout should be a number in range", id="dropout"),
        pytest.param(
            dict(backend="cudnn"), "unknown backend 'cudnn'; expected one of", id="unknown-backend"
        ),
    ],
)
def test_bad_constructor(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fastlstm.LSTM(5, 7, **kwargs)


def test_named_backend_that_cannot_serve_raises(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    m = fastlstm.LSTM(5, 7, backend="triton")
    with pytest.raises(RuntimeError, match=r"backend 'triton' cannot serve.*TRITON_INTERPRET"):
        m(torch.randn(3, 2, 5))


def test_functional_rejects_bad_weight_list():
    with pytest.raises(ValueError, match="2 to 5 tensors per layer"):
        fastlstm.lstm(torch.randn(3, 2, 5), None, [torch.randn(28, 5)], num_layers=1)


def test_input_on_another_device_than_weights():
    m = fastlstm.LSTM(5, 7, device="meta")
    with pytest.raises(RuntimeError, match="input is on cpu but the LSTM weights are on meta"):
        m(torch.randn(3, 2, 5))


def test_hx_on_another_device_than_input():
    m = fastlstm.LSTM(5, 7)
    hx = (torch.zeros(1, 2, 7, device="meta"), torch.zeros(1, 2, 7))
    with pytest.raises(RuntimeError, match=r"hx\[0\] is on meta but the input is on cpu"):
        m(torch.randn(3, 2, 5), hx)
