"""Parity of fastlstm.LSTM with torch.nn.LSTM holding copied weights, on every backend.

Outputs, final states and every gradient (input, all weights and biases, h0, c0) under random
cotangents, for every input form nn.LSTM accepts plus ``lengths=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastlstm
from fastlstm.backends import select_backend

from helpers import assert_close


@dataclass(frozen=True)
class Case:
    T: int
    B: int
    I: int
    H: int
    layers: int = 1
    bidir: bool = False
    proj: int = 0
    bias: bool = True
    batch_first: bool = False
    form: str = "padded"  # padded | unbatched | packed | packed-unsorted | lengths
    with_hx: bool = True
    lengths: tuple[int, ...] = field(default=())

    @property
    def id(self) -> str:
        parts = [f"T{self.T}", f"B{self.B}", f"I{self.I}", f"H{self.H}"]
        if self.layers > 1:
            parts.append(f"L{self.layers}")
        if self.bidir:
            parts.append("bidir")
        if self.proj:
            parts.append(f"proj{self.proj}")
        if not self.bias:
            parts.append("nobias")
        if self.batch_first:
            parts.append("bf")
        if self.form != "padded":
            parts.append(self.form)
        if not self.with_hx:
            parts.append("nohx")
        return "-".join(parts)


CASES = [
    Case(7, 3, 5, 20),
    Case(1, 1, 4, 9),
    Case(1, 3, 4, 9, bidir=True, form="lengths", lengths=(1, 1, 1)),
    Case(5, 2, 3, 13, layers=3),
    Case(6, 4, 5, 10, bidir=True),
    Case(6, 3, 5, 12, layers=2, bidir=True, proj=4),
    Case(4, 2, 6, 7, proj=3, with_hx=False),
    Case(5, 3, 4, 8, bias=False, batch_first=True),
    Case(5, 1, 4, 6, layers=2, form="unbatched"),
    Case(6, 1, 4, 6, bidir=True, batch_first=True, form="unbatched"),
    Case(7, 4, 5, 11, bidir=True, form="packed", lengths=(7, 5, 2, 1)),
    Case(7, 4, 5, 11, layers=2, bidir=True, form="packed-unsorted", lengths=(2, 7, 1, 5)),
    Case(
        6,
        5,
        3,
        9,
        layers=2,
        bidir=True,
        proj=5,
        batch_first=True,
        form="packed-unsorted",
        lengths=(3, 6, 6, 1, 4),
    ),
    Case(9, 3, 4, 17, bidir=True, batch_first=True, form="lengths", lengths=(9, 4, 6)),
    Case(8, 4, 5, 10, layers=2, proj=3, form="lengths", lengths=(8, 8, 8, 8)),
    Case(5, 3, 4, 7, layers=2, bidir=True, form="lengths", lengths=(5, 1, 3), with_hx=False),
]


def _backend_available(backend: str, dtype: torch.dtype) -> bool:
    try:
        select_backend(backend, torch.device("cpu"), dtype, 16, 0)
    except RuntimeError:
        return False
    return True


def build_pair(case: Case, backend: str, dtype: torch.dtype, device: str = "cpu"):
    kwargs = dict(
        num_layers=case.layers,
        bias=case.bias,
        batch_first=case.batch_first,
        bidirectional=case.bidir,
        proj_size=case.proj,
        dtype=dtype,
        device=device,
    )
    ref = nn.LSTM(case.I, case.H, **kwargs)
    ours = fastlstm.LSTM(case.I, case.H, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def make_inputs(case: Case, dtype: torch.dtype, device: str = "cpu"):
    D = 2 if case.bidir else 1
    P = case.proj or case.H
    shape = (case.B, case.T, case.I) if case.batch_first else (case.T, case.B, case.I)
    x = torch.randn(shape, dtype=dtype, device=device)
    hx = None
    if case.with_hx:
        hx = (
            torch.randn(case.layers * D, case.B, P, dtype=dtype, device=device),
            torch.randn(case.layers * D, case.B, case.H, dtype=dtype, device=device),
        )
    if case.form == "unbatched":
        x = x[0] if case.batch_first else x[:, 0]
        if hx is not None:
            hx = (hx[0][:, 0], hx[1][:, 0])
    lengths = torch.tensor(case.lengths) if case.lengths else None
    return x, hx, lengths


def run(module, case: Case, x, hx, lengths, as_packed: bool):
    """Forward through ``module``; returns (padded output, h_n, c_n)."""
    if as_packed:
        packed = pack_padded_sequence(
            x, lengths, batch_first=case.batch_first, enforce_sorted=case.form == "packed"
        )
        out, (h, c) = module(packed, hx)
        assert isinstance(out, PackedSequence)
        assert torch.equal(out.batch_sizes, packed.batch_sizes)
        out, _ = pad_packed_sequence(out, batch_first=case.batch_first, total_length=case.T)
        return out, h, c
    if case.form == "lengths" and isinstance(module, fastlstm.LSTM):
        out, (h, c) = module(x, hx, lengths=lengths)
        return out, h, c
    out, (h, c) = module(x, hx)
    return out, h, c


def check_parity(case: Case, backend: str, dtype: torch.dtype, tol=None, device: str = "cpu"):
    ref, ours = build_pair(case, backend, dtype, device)
    x, hx, lengths = make_inputs(case, dtype, device)
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        hxi = None if hx is None else tuple(t.clone().requires_grad_() for t in hx)
        # nn.LSTM has no lengths=: it sees the same data as a PackedSequence.
        packed = case.form.startswith("packed") or (case.form == "lengths" and module is ref)
        out, h, c = run(module, case, xi, hxi, lengths, packed)
        results.append((module, xi, hxi, out, h, c))
    (_, _, _, out_r, h_r, c_r), (_, _, _, out_o, h_o, c_o) = results
    atol, rtol = tol or (None, None)
    assert_close(out_o, out_r, "output", atol, rtol)
    assert_close(h_o, h_r, "h_n", atol, rtol)
    assert_close(c_o, c_r, "c_n", atol, rtol)
    assert ours.last_backend == backend

    cot = [torch.randn_like(t) for t in (out_r, h_r, c_r)]
    grads = []
    for module, xi, hxi, out, h, c in results:
        loss = sum((t * g).sum() for t, g in zip((out, h, c), cot, strict=True))
        inputs = [xi, *module.parameters()] + ([] if hxi is None else list(hxi))
        grads.append(torch.autograd.grad(loss, inputs))
    names = ["d_input"] + [f"d_{n}" for n, _ in ours.named_parameters()]
    names += [] if hx is None else ["d_h0", "d_c0"]
    for name, g_o, g_r in zip(names, grads[1], grads[0], strict=True):
        assert_close(g_o, g_r, name, atol, rtol)


BACKENDS = ["reference", "aten"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_parity_float64(case: Case, backend: str):
    check_parity(case, backend, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "case", [pytest.param(c, id=c.id) for c in (CASES[0], CASES[5], CASES[12], CASES[13])]
)
def test_parity_float32(case: Case, backend: str):
    check_parity(case, backend, torch.float32)


TRITON_CASES = [CASES[i] for i in (0, 1, 2, 5, 7, 8, 11, 13)]


@pytest.fixture
def exact_fp32_on_cuda():
    """cuDNN (nn.LSTM) and the Triton kernels both use TF32 for fp32 unless this is False."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in TRITON_CASES])
def test_parity_triton(case: Case):
    """Needs CUDA, or TRITON_INTERPRET=1 (as CI sets) to run the kernels on the CPU."""
    if not _backend_available("triton", torch.float32):
        pytest.skip("backend 'triton' needs CUDA or TRITON_INTERPRET=1")
    check_parity(case, "triton", torch.float32)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES])
def test_parity_triton_cuda(case: Case, exact_fp32_on_cuda):
    """The whole grid (packed, lengths, bidirectional, proj) on the GPU, fp32 without TF32."""
    check_parity(case, "triton", torch.float32, tol=(1e-4, 1e-4), device="cuda")


def test_auto_picks_aten_on_cpu_and_records_it():
    m = fastlstm.LSTM(3, 4)
    m(torch.randn(2, 1, 3))
    assert m.last_backend == "aten"


def test_dropout_only_in_training():
    m = fastlstm.LSTM(4, 6, num_layers=2, dropout=0.9, backend="reference")
    x = torch.randn(5, 3, 4)
    m.eval()
    a, _ = m(x)
    b, _ = m(x)
    assert torch.equal(a, b)
    m.train()
    c, _ = m(x)
    assert not torch.allclose(a, c)


def test_lengths_output_is_zero_past_end():
    m = fastlstm.LSTM(3, 5, bidirectional=True)
    out, _ = m(torch.randn(6, 2, 3), lengths=torch.tensor([6, 2]))
    assert torch.count_nonzero(out[2:, 1]) == 0
    assert torch.count_nonzero(out[:2, 1]) > 0
