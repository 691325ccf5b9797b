"""The Triton LSTM kernels against the reference backend and ``torch.nn.LSTM``.

Without CUDA every case runs through Triton's interpreter on CPU tensors (see conftest.py);
the ``cuda`` variants (``gpu`` marker) run the same cases compiled on a GPU. Every buffer the
launchers allocate is NaN-poisoned, so an element a kernel never writes fails.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from fastlstm.backends import reference
from fastlstm.kernels import (
    DESIGN_ENV,
    batch,
    dot_precision,
    launch,
    persistent,
    recurrence_backward,
    recurrence_forward,
)

from helpers import assert_close, reference_direction
from helpers import triton_direction as lstm_direction

# (T, B, I, H, P, lengths, reverse); P = 0 means no projection. B = 17 spans two batch
# tiles; H = 20 and P = 9 are not multiples of 16; lengths "random" leave positions past
# the longest sequence of a tile, "ones" is length 1 everywhere, "equal" all the same < T.
CASES = [
    pytest.param(7, 3, 5, 20, 0, None, False, id="T7-B3-H20"),
    pytest.param(7, 3, 5, 20, 0, None, True, id="T7-B3-H20-rev"),
    pytest.param(1, 2, 3, 16, 0, None, False, id="T1-B2-H16"),
    pytest.param(6, 17, 4, 20, 0, "random", False, id="T6-B17-H20-lens"),
    pytest.param(6, 17, 4, 20, 0, "random", True, id="T6-B17-H20-lens-rev"),
    pytest.param(5, 4, 3, 12, 0, "ones", True, id="T5-B4-H12-len1-rev"),
    pytest.param(5, 4, 3, 12, 0, "equal", False, id="T5-B4-H12-lens-equal"),
    pytest.param(6, 5, 4, 20, 9, "random", False, id="T6-B5-H20-P9-lens"),
    pytest.param(6, 5, 4, 20, 9, "random", True, id="T6-B5-H20-P9-lens-rev"),
    pytest.param(4, 3, 4, 24, 40, None, False, id="T4-B3-H24-P40"),
]


def make_lengths(kind: str | None, T: int, B: int, device) -> torch.Tensor | None:
    if kind is None:
        return None
    if kind == "ones":
        return torch.ones(B, dtype=torch.int64, device=device)
    if kind == "equal":
        return torch.full((B,), max(1, T - 2), dtype=torch.int64, device=device)
    return torch.randint(1, T + 1, (B,), device=device)


def make_inputs(T, B, I, H, P, device, dtype=torch.float32) -> dict[str, torch.Tensor | None]:
    """Random direction inputs, all leaves requiring grad; weights scaled like nn.LSTM's."""
    R = P or H
    k = H**-0.5

    def uniform(*shape):
        return ((torch.rand(*shape, device=device) * 2 - 1) * k).to(dtype).requires_grad_()

    return {
        "x": torch.randn(T, B, I, device=device).to(dtype).requires_grad_(),
        "w_ih": uniform(4 * H, I),
        "w_hh": uniform(4 * H, R),
        "b_ih": uniform(4 * H),
        "b_hh": uniform(4 * H),
        "w_hr": uniform(P, H) if P else None,
        "h0": torch.randn(B, R, device=device).to(dtype).requires_grad_(),
        "c0": torch.randn(B, H, device=device).to(dtype).requires_grad_(),
    }


def grads(outputs, inputs: dict, cotangents) -> dict[str, torch.Tensor]:
    names = [n for n, t in inputs.items() if t is not None]
    gs = torch.autograd.grad(outputs, [inputs[n] for n in names], cotangents)
    return dict(zip(names, gs, strict=True))


def compare_direction(actual, expected, inputs, atol=None, rtol=None) -> None:
    """Outputs, final states and every input gradient under random cotangents."""
    for name, a, e in zip(("out", "h_n", "c_n"), actual, expected, strict=True):
        assert_close(a, e.to(a.dtype), name, atol=atol, rtol=rtol)
    cot = [torch.randn_like(e) for e in expected]
    g_actual = grads(actual, inputs, [c.to(a.dtype) for c, a in zip(cot, actual, strict=True)])
    g_expected = grads(expected, inputs, cot)
    for name, g in g_expected.items():
        assert_close(g_actual[name], g.to(g_actual[name].dtype), f"d_{name}", atol=atol, rtol=rtol)


@pytest.mark.parametrize(("T", "B", "I", "H", "P", "lens", "reverse"), CASES)
def test_direction_matches_reference(T, B, I, H, P, lens, reverse, tiles, device):
    inputs = make_inputs(T, B, I, H, P, device)
    lengths = make_lengths(lens, T, B, device)
    actual = lstm_direction(**inputs, lengths=lengths, reverse=reverse)
    expected = reference_direction(*inputs.values(), lengths, reverse)
    compare_direction(actual, expected, inputs)


@pytest.mark.parametrize(("T", "B", "I", "H", "P", "lens", "reverse"), CASES[3:9])
def test_primitives_match_reference(T, B, I, H, P, lens, reverse, device):
    """The bare launchers keep the reference primitives' contract (the compiled op uses them)."""
    R = P or H
    xp = torch.randn(T, B, 4 * H, device=device)
    w_hh = torch.randn(4 * H, R, device=device) * H**-0.5
    w_hr = torch.randn(P, H, device=device) * H**-0.5 if P else None
    h0, c0 = torch.randn(B, R, device=device), torch.randn(B, H, device=device)
    lengths = make_lengths(lens, T, B, device)
    fwd = recurrence_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    ref = reference.recurrence_forward(xp, w_hh, w_hr, h0, c0, lengths, reverse)
    valid = torch.ones(T, B, 1, dtype=torch.bool, device=device)
    if lengths is not None:
        valid = (torch.arange(T, device=device)[:, None] < lengths)[..., None]
    for name, a, e in zip(("out", "h_n", "c_n"), fwd[:3], ref[:3], strict=True):
        assert_close(a, e, name)
    # Saved state is only defined at valid positions; the kernel writes zeros elsewhere.
    for name, a, e in zip(("gates", "cs"), fwd[3:], ref[3:], strict=True):
        assert a.dtype == torch.float32
        assert_close(a, torch.where(valid, e, 0.0), name)

    d_out, d_hn, d_cn = torch.randn_like(fwd[0]), torch.randn_like(h0), torch.randn_like(c0)
    gates, cs = fwd[3], fwd[4]
    bwd = recurrence_backward(d_out, d_hn, d_cn, w_hh, w_hr, c0, gates, cs, lengths, reverse)
    ref_bwd = reference.recurrence_backward(
        d_out, d_hn, d_cn, w_hh, w_hr, c0, ref[3], ref[4], lengths, reverse
    )
    for name, a, e in zip(("d_xp", "d_h0", "d_c0"), bwd[:3], ref_bwd[:3], strict=True):
        assert_close(a, e, name)
    assert (bwd[3] is None) == (ref_bwd[3] is None)
    if P:
        assert_close(bwd[3], ref_bwd[3], "d_hs")


def nn_lstm_directions(lstm: nn.LSTM, x, h0, c0, lengths, device):
    """fastlstm.kernels run direction by direction with ``lstm``'s own parameters."""
    outs, hs, cs = [], [], []
    for d, suffix in enumerate(("", "_reverse")):
        p = {n: getattr(lstm, f"{n}_l0{suffix}") for n in ("weight_ih", "weight_hh")}
        w_hr = getattr(lstm, f"weight_hr_l0{suffix}", None)
        out, h_n, c_n = lstm_direction(
            x,
            p["weight_ih"],
            p["weight_hh"],
            getattr(lstm, f"bias_ih_l0{suffix}"),
            getattr(lstm, f"bias_hh_l0{suffix}"),
            w_hr,
            h0[d],
            c0[d],
            lengths,
            reverse=d == 1,
        )
        outs.append(out)
        hs.append(h_n)
        cs.append(c_n)
    return torch.cat(outs, -1), torch.stack(hs), torch.stack(cs)


@pytest.mark.parametrize(
    ("T", "B", "I", "H", "P", "lens"),
    [
        pytest.param(6, 3, 5, 20, 0, None, id="T6-B3-H20-bidir"),
        pytest.param(5, 4, 3, 18, 7, None, id="T5-B4-H18-P7-bidir"),
        pytest.param(6, 5, 4, 20, 0, "random", id="T6-B5-H20-packed-bidir"),
        pytest.param(6, 5, 4, 20, 9, "random", id="T6-B5-H20-P9-packed-bidir"),
    ],
)
def test_bidirectional_matches_nn_lstm(T, B, I, H, P, lens, device):
    """Drop-in promise: same numbers as nn.LSTM (on a PackedSequence for lengths)."""
    lstm = nn.LSTM(I, H, proj_size=P, bidirectional=True).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0 = torch.randn(2, B, P or H, device=device, requires_grad=True)
    c0 = torch.randn(2, B, H, device=device, requires_grad=True)
    lengths = make_lengths(lens, T, B, device)
    if lengths is not None:
        lengths[0] = T  # pad_packed_sequence pads to total_length=T either way
        packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=False)
        out_packed, (h_n, c_n) = lstm(packed, (h0, c0))
        out, _ = pad_packed_sequence(out_packed, total_length=T)
    else:
        out, (h_n, c_n) = lstm(x, (h0, c0))
    expected = (out, h_n, c_n)
    actual = nn_lstm_directions(lstm, x, h0, c0, lengths, device)
    inputs = {"x": x, "h0": h0, "c0": c0, **dict(lstm.named_parameters())}
    compare_direction(actual, expected, inputs)


@pytest.mark.parametrize(
    ("dtype", "tol"),
    [
        pytest.param(torch.float16, 1e-2, id="fp16"),
        pytest.param(
            torch.bfloat16,
            6e-2,
            id="bf16",
            marks=pytest.mark.skipif(
                not torch.cuda.is_available(), reason="the interpreter miscomputes bf16 tl.dot"
            ),
        ),
    ],
)
@pytest.mark.parametrize("proj", [0, 9], ids=["noproj", "P9"])
def test_half_dtypes_within_tolerance(dtype, tol, proj, device):
    """Half inputs/weights with fp32 state and accumulation, against fp32 on the same values."""
    T, B, I, H = 6, 5, 4, 20
    inputs = make_inputs(T, B, I, H, proj, device, dtype)
    lengths = make_lengths("random", T, B, device)
    actual = lstm_direction(**inputs, lengths=lengths, reverse=True)
    assert actual[0].dtype == dtype and actual[1].dtype == dtype
    fp32 = {
        n: None if t is None else t.detach().float().requires_grad_() for n, t in inputs.items()
    }
    expected = reference_direction(*fp32.values(), lengths, True)
    for name, a, e in zip(("out", "h_n", "c_n"), actual, expected, strict=True):
        assert_close(a.float(), e, name, atol=tol, rtol=tol)
    cot = [torch.randn_like(e) for e in expected]
    g_actual = grads(actual, inputs, [c.to(dtype) for c in cot])
    g_expected = grads(expected, fp32, cot)
    for name, g in g_expected.items():
        assert g_actual[name].dtype == dtype
        assert_close(g_actual[name].float(), g, f"d_{name}", atol=tol, rtol=tol)


def test_autocast_runs_in_half_and_grads_reach_fp32_params(device):
    dtype = torch.float16
    T, B, I, H = 5, 3, 4, 16
    inputs = make_inputs(T, B, I, H, 0, device)
    with torch.autocast(device.type, dtype=dtype):
        out, _, _ = lstm_direction(**inputs)
    assert out.dtype == dtype
    expected = reference_direction(*inputs.values(), None, False)
    assert_close(out.float(), expected[0], "out", atol=1e-2, rtol=1e-2)
    out.float().square().sum().backward()
    assert inputs["w_hh"].grad is not None and inputs["w_hh"].grad.dtype == torch.float32


def test_only_needed_gradients(device):
    """Inputs that do not require grad get None (their GEMMs are skipped)."""
    inputs = make_inputs(4, 3, 5, 16, 0, device)
    x = inputs["x"].detach()
    out, _, _ = lstm_direction(x, inputs["w_ih"], inputs["w_hh"].detach())
    out.sum().backward()
    assert x.grad is None and inputs["w_hh"].grad is None
    assert inputs["w_ih"].grad is not None


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_new_sequence_length_does_not_recompile():
    kernel = batch._batch_fwd_kernel
    inputs = make_inputs(5, 3, 4, 32, 0, torch.device("cuda"))
    lstm_direction(**inputs, design="batch")
    try:
        cache = kernel.device_caches[torch.cuda.current_device()][0]
    except (AttributeError, KeyError, IndexError, TypeError):
        pytest.skip("this triton version keeps its kernel cache elsewhere")
    if not isinstance(cache, dict) or not cache:
        pytest.skip("this triton version keeps its kernel cache elsewhere")
    before = len(cache)
    inputs = {n: t.detach() if t is not None else None for n, t in inputs.items()}
    x = torch.randn(11, 3, 4, device="cuda")
    lstm_direction(x, *list(inputs.values())[1:], design="batch")
    assert len(cache) == before


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(
    ("T", "B", "H", "P"),
    [
        pytest.param(33, 70, 256, 0, id="T33-B70-H256"),
        pytest.param(17, 19, 1024, 0, id="T17-B19-H1024"),
        pytest.param(21, 9, 200, 72, id="T21-B9-H200-P72"),
    ],
)
def test_large_shapes_on_gpu(T, B, H, P):
    device = torch.device("cuda")
    inputs = make_inputs(T, B, 32, H, P, device)
    lengths = make_lengths("random", T, B, device)
    actual = lstm_direction(**inputs, lengths=lengths, reverse=True)
    expected = reference_direction(*inputs.values(), lengths, True)
    compare_direction(actual, expected, inputs, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("tf32_on", [False, True], ids=["tf32-off", "tf32-on"])
def test_fp32_follows_nn_lstm_precision_switch(tf32_on, device):
    """fp32 dots follow ``torch.backends.cudnn.allow_tf32`` as cuDNN's nn.LSTM does: with it
    off ("ieee") the kernels match nn.LSTM at fp32 tolerances, with it on (TF32 on both
    sides, PyTorch's default) within TF32's error. The interpreter computes every fp32 dot
    exactly, so there only the switch's effect on the launch is exercised."""
    torch.backends.cudnn.allow_tf32 = tf32_on  # both restored by the exact_fp32 fixture
    torch.backends.cuda.matmul.allow_tf32 = tf32_on
    assert dot_precision(torch.float32) == ("tf32" if tf32_on else "ieee")
    T, B, I, H = (16, 20, 32, 96) if device.type == "cuda" else (5, 3, 4, 20)
    lstm = nn.LSTM(I, H, bidirectional=True).to(device)
    x = torch.randn(T, B, I, device=device, requires_grad=True)
    h0 = torch.randn(2, B, H, device=device, requires_grad=True)
    c0 = torch.randn(2, B, H, device=device, requires_grad=True)
    out, (h_n, c_n) = lstm(x, (h0, c0))
    actual = nn_lstm_directions(lstm, x, h0, c0, None, device)
    inputs = {"x": x, "h0": h0, "c0": c0, **dict(lstm.named_parameters())}
    tol = 2e-2 if tf32_on else None
    compare_direction(actual, (out, h_n, c_n), inputs, atol=tol, rtol=tol)


def _kernel_name(kernel) -> str:
    while not hasattr(kernel, "__name__"):
        kernel = kernel.fn  # @triton.heuristics wraps the JITFunction
    return kernel.__name__


@pytest.fixture
def launched(monkeypatch) -> list[str]:
    """Names of the kernels launched during the test (every launch goes through
    ``kernels.launch.launch``, imported into each kernel module)."""
    names: list[str] = []
    real = launch.launch

    def spy(kernel, grid, **kwargs):
        names.append(_kernel_name(kernel))
        real(kernel, grid, **kwargs)

    for module in (batch, persistent):
        monkeypatch.setattr(module, "launch", spy)
    return names


@pytest.mark.parametrize(
    ("design", "kernel"),
    [
        pytest.param("batch", "_batch_fwd_kernel", id="batch"),
        pytest.param("persistent", "_persistent_fwd_kernel", id="persistent"),
        pytest.param("step", "_step_fwd_kernel", id="step"),
    ],
)
@pytest.mark.parametrize(
    ("T", "B", "I", "H", "P", "lens", "reverse"),
    [
        pytest.param(5, 17, 4, 20, 0, "random", True, id="T5-B17-H20-lens-rev"),
        pytest.param(4, 3, 4, 20, 9, None, False, id="T4-B3-H20-P9"),
    ],
)
def test_forced_design_runs_and_matches_reference(
    design, kernel, T, B, I, H, P, lens, reverse, device, monkeypatch, launched
):
    monkeypatch.setenv(DESIGN_ENV, design)
    inputs = make_inputs(T, B, I, H, P, device)
    lengths = make_lengths(lens, T, B, device)
    actual = lstm_direction(**inputs, lengths=lengths, reverse=reverse)
    expected = reference_direction(*inputs.values(), lengths, reverse)
    compare_direction(actual, expected, inputs)
    assert kernel in launched
    backward = kernel.replace("fwd", "bwd")
    assert backward in launched, launched  # backward ran the forward's design
    others = {"batch": "_batch_", "persistent": "_persistent_", "step": "_step_"}
    del others[design]
    assert not [n for n in launched if n.startswith(tuple(others.values()))], launched
