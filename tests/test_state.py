"""state_dict interchange, serialisation, copies and dtype conversion."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

import fastlstm

from helpers import assert_close

CONFIGS = [
    pytest.param(dict(), id="L1"),
    pytest.param(dict(num_layers=3, bidirectional=True), id="L3-bidir"),
    pytest.param(dict(num_layers=2, proj_size=3, bias=False), id="L2-proj3-nobias"),
]


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_parameters_match_nn_lstm(kwargs):
    ref, ours = nn.LSTM(5, 7, **kwargs), fastlstm.LSTM(5, 7, **kwargs)
    assert [(n, p.shape) for n, p in ref.named_parameters()] == [
        (n, p.shape) for n, p in ours.named_parameters()
    ]
    assert repr(ref) == repr(ours)


@pytest.mark.parametrize("kwargs", CONFIGS)
def test_state_dict_round_trips_both_ways(kwargs):
    ref, ours = nn.LSTM(5, 7, **kwargs), fastlstm.LSTM(5, 7, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(4, 2, 5)
    assert_close(ours(x)[0], ref(x)[0], "output after nn -> fastlstm")
    back = nn.LSTM(5, 7, **kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    for (n, a), b in zip(back.state_dict().items(), ref.state_dict().values(), strict=True):
        assert torch.equal(a, b), n


def test_initialisation_matches_nn_lstm():
    torch.manual_seed(3)
    ref = nn.LSTM(5, 7, num_layers=2)
    torch.manual_seed(3)
    ours = fastlstm.LSTM(5, 7, num_layers=2)
    for a, b in zip(ref.parameters(), ours.parameters(), strict=True):
        assert torch.equal(a, b)


def test_torch_save_load_and_deepcopy():
    m = fastlstm.LSTM(4, 6, bidirectional=True, backend="reference")
    x = torch.randn(3, 2, 4)
    expected = m(x)[0]
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert isinstance(loaded, fastlstm.LSTM) and loaded.backend == "reference"
    assert_close(loaded(x)[0], expected, "loaded output")
    cp = copy.deepcopy(m)
    assert_close(cp(x)[0], expected, "deepcopy output")
    cp.weight_hh_l0.data.zero_()
    assert not torch.equal(cp.weight_hh_l0, m.weight_hh_l0)


@pytest.mark.parametrize("convert", ["to-double", "double"])
def test_dtype_conversion(convert):
    m = fastlstm.LSTM(4, 6, num_layers=2)
    m = m.to(torch.float64) if convert == "to-double" else m.double()
    assert all(p.dtype == torch.float64 for p in m.parameters())
    out, (h, c) = m(torch.randn(3, 2, 4, dtype=torch.float64))
    assert out.dtype == h.dtype == c.dtype == torch.float64


def test_is_an_rnnbase_in_lstm_mode_and_repr_shows_backend():
    m = fastlstm.LSTM(4, 6, backend="reference")
    # Not an nn.LSTM subclass on purpose: torch.compile refuses to trace nn.LSTM instances.
    assert isinstance(m, nn.RNNBase) and m.mode == "LSTM"
    assert repr(m) == "LSTM(4, 6, backend='reference')"
