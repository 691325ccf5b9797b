"""Property test: on random shapes and lengths, every CPU backend agrees with nn.LSTM."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastlstm

from helpers import assert_close


@st.composite
def configs(draw):
    T = draw(st.integers(1, 9))
    B = draw(st.integers(1, 5))
    H = draw(st.integers(1, 12))
    return dict(
        T=T,
        B=B,
        I=draw(st.integers(1, 6)),
        H=H,
        layers=draw(st.integers(1, 2)),
        bidir=draw(st.booleans()),
        proj=draw(st.integers(0, H - 1)),
        lengths=draw(st.lists(st.integers(1, T), min_size=B, max_size=B)),
        backend=draw(st.sampled_from(["reference", "aten"])),
    )


@settings(max_examples=40, deadline=None)
@given(configs())
def test_matches_nn_lstm_on_packed_input(cfg):
    kwargs = dict(num_layers=cfg["layers"], bidirectional=cfg["bidir"], proj_size=cfg["proj"])
    ref = nn.LSTM(cfg["I"], cfg["H"], dtype=torch.float64, **kwargs)
    ours = fastlstm.LSTM(cfg["I"], cfg["H"], dtype=torch.float64, backend=cfg["backend"], **kwargs)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(cfg["T"], cfg["B"], cfg["I"], dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor(cfg["lengths"])
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_r, (h_r, c_r) = ref(packed)
    out_r, _ = pad_packed_sequence(out_r, total_length=cfg["T"])
    out_o, (h_o, c_o) = ours(x, lengths=lengths)
    assert_close(out_o, out_r, "output")
    assert_close(h_o, h_r, "h_n")
    assert_close(c_o, c_r, "c_n")
    cot = torch.randn_like(out_r)
    (g_r,) = torch.autograd.grad((out_r * cot).sum() + h_r.sum() + c_r.sum(), x)
    (g_o,) = torch.autograd.grad((out_o * cot).sum() + h_o.sum() + c_o.sum(), x)
    assert_close(g_o, g_r, "d_input")
