"""The reference backend's hand-written BPTT proves the math: float64 gradcheck and
gradgradcheck."""

from __future__ import annotations

import pytest
import torch

from fastlstm import functional
from fastlstm.sequences import reverse_index

GRADCHECK_CASES = [
    pytest.param(4, 3, 3, 5, 0, None, False, id="T4-B3-H5"),
    pytest.param(1, 1, 2, 3, 0, None, False, id="T1-B1-H3"),
    pytest.param(5, 3, 3, 5, 2, None, True, id="T5-B3-H5-proj2-rev"),
    pytest.param(6, 3, 2, 4, 0, (6, 2, 4), False, id="T6-B3-H4-lengths"),
    pytest.param(6, 3, 2, 4, 3, (1, 6, 3), True, id="T6-B3-H4-proj3-lengths-rev"),
]


def direction_problem(T, B, I, H, proj, lengths, reverse):
    """float64 leaves ``x, w_ih, w_hh, b_ih, b_hh[, w_hr], h0, c0`` and the direction as a
    function of them (the reference backend, with ``lengths`` and ``reverse`` fixed)."""
    P = proj or H
    d = dict(dtype=torch.float64)
    tensors = [
        torch.randn(T, B, I, **d),
        torch.randn(4 * H, I, **d) * 0.5,
        torch.randn(4 * H, P, **d) * 0.5,
        torch.randn(4 * H, **d),
        torch.randn(4 * H, **d),
        *([torch.randn(P, H, **d) * 0.5] if proj else []),
        torch.randn(B, P, **d),
        torch.randn(B, H, **d),
    ]
    lens = None if lengths is None else torch.tensor(lengths)

    def fn(x, w_ih, w_hh, b_ih, b_hh, *rest):
        w_hr, h0, c0 = rest if proj else (None, *rest)
        args = (x, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, lens, reverse)
        return functional.lstm_direction(*args, backend="reference")

    return fn, [t.requires_grad_() for t in tensors]


@pytest.mark.parametrize(("T", "B", "I", "H", "proj", "lengths", "reverse"), GRADCHECK_CASES)
def test_gradcheck(T, B, I, H, proj, lengths, reverse):
    fn, tensors = direction_problem(T, B, I, H, proj, lengths, reverse)
    assert torch.autograd.gradcheck(fn, tensors)


@pytest.mark.parametrize(
    ("T", "B", "I", "H", "proj", "lengths", "reverse"),
    [
        pytest.param(3, 2, 2, 3, 0, None, False, id="T3-B2-H3"),
        pytest.param(4, 3, 2, 3, 2, (4, 1, 2), True, id="T4-B3-H3-proj2-lengths-rev"),
    ],
)
def test_gradgradcheck(T, B, I, H, proj, lengths, reverse):
    """Double backward (gradient penalties, meta-learning) is exact on the reference."""
    fn, tensors = direction_problem(T, B, I, H, proj, lengths, reverse)
    assert torch.autograd.gradgradcheck(fn, tensors)


def test_reverse_index_is_an_involution():
    lengths = torch.tensor([5, 1, 3])
    idx = reverse_index(lengths, 5)
    assert idx.gather(0, idx).equal(torch.arange(5).unsqueeze(1).expand(5, 3))
    assert idx[:, 2].tolist() == [2, 1, 0, 3, 4]
