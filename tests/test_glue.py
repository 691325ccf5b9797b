"""The one direction glue, the backend registry and the one read of ``lengths`` per call.

- eager and ``torch.compile`` runs of a backend run the same glue, so they agree;
- ``select_backend`` decides, and ``last_backend`` names what actually ran;
- ``lengths`` is read to the host once per call, whatever the layers, directions, backend;
- autocast, frozen inputs and the TF32 switch give the right values, not only the right types.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import fastlstm
from fastlstm.backends import REGISTRY, select_backend

from helpers import assert_close, backend_why_not

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
GPU = [pytest.mark.gpu, CUDA]


def _backend_param(name: str, device: str = "cpu", dtype=torch.float32):
    why_not = backend_why_not(name, device, dtype, 16) if device == "cpu" else None
    marks = (
        GPU if device == "cuda" else [pytest.mark.skipif(why_not is not None, reason=str(why_not))]
    )
    return pytest.param(name, id=f"{name}-{device}", marks=marks)


CPU_BACKENDS = [_backend_param(b) for b in ("reference", "aten", "triton")]
OP_BACKENDS = [_backend_param(b) for b in ("reference", "triton")]  # those with a recurrence pair


def _model(backend: str, device="cpu", dtype=torch.float32):
    torch.manual_seed(1)
    return fastlstm.LSTM(
        5, 16, num_layers=2, bidirectional=True, backend=backend, device=device, dtype=dtype
    )


def _forward_backward(fn, model, x, lengths, cot):
    out, (h, c) = fn(x, lengths=lengths)
    loss = (out * cot).sum() + h.square().sum() + c.sum()
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    return [out, h, c, *grads]


@pytest.mark.parametrize(
    ("backend", "device", "dtype"),
    [
        *[
            pytest.param(p.values[0], "cpu", torch.float32, marks=p.marks, id=p.id)
            for p in OP_BACKENDS
        ],
        pytest.param("reference", "cpu", torch.float64, id="reference-cpu-float64"),
        pytest.param("triton", "cuda", torch.bfloat16, marks=GPU, id="triton-cuda-bf16"),
        pytest.param("triton", "cuda", torch.float16, marks=GPU, id="triton-cuda-fp16"),
    ],
)
def test_eager_and_compiled_agree(backend, device, dtype):
    torch._dynamo.reset()
    model = _model(backend, device, dtype)
    x = torch.randn(6, 3, 5, device=device, dtype=dtype, requires_grad=True)
    lengths = torch.tensor([6, 2, 4], device=device)
    cot = torch.randn(6, 3, 32, device=device, dtype=dtype)
    eager = _forward_backward(model, model, x, lengths, cot)
    assert model.last_backend == backend
    compiled = _forward_backward(torch.compile(model, fullgraph=True), model, x, lengths, cot)
    assert model.last_backend == backend
    names = ["out", "h_n", "c_n", "d_x", *[f"d_{n}" for n, _ in model.named_parameters()]]
    # The same glue and recurrence run both ways; only the ops the compiler generates around
    # the custom op (concatenation, the loss) may round differently: at most one last place.
    atol, rtol = {torch.float64: (1e-12, 0.0), torch.float32: (1e-6, 0.0)}.get(dtype, (0, 8e-3))
    for name, a, e in zip(names, compiled, eager, strict=True):
        assert_close(a, e, f"compiled {name}", atol=atol, rtol=rtol)


def test_compiled_cpu_run_names_the_backend_that_ran():
    torch._dynamo.reset()
    model = _model("auto")
    model(torch.randn(4, 2, 5))
    assert model.last_backend == "aten"
    torch.compile(model, fullgraph=True)(torch.randn(4, 2, 5))
    # The fused aten op cannot run as the compile custom op: the reference recurrence did.
    assert model.last_backend == "reference"


def test_named_aten_under_compile_says_why():
    torch._dynamo.reset()
    model = _model("aten")
    with pytest.raises(Exception, match=r"backend 'aten' cannot serve.*torch\.compile"):
        torch.compile(model, fullgraph=True)(torch.randn(4, 2, 5))


def test_select_backend_is_the_one_answer():
    cpu = torch.device("cpu")
    assert select_backend("auto", cpu, torch.float32, 16).name == "aten"
    assert select_backend("auto", cpu, torch.float32, 16, compiling=True).name == "reference"
    assert select_backend("auto", cpu, torch.float32, 16, 4, transformed=True).name == ("reference")
    for name, entry in REGISTRY.items():
        assert entry.name == name
        request_why_not = backend_why_not(name, cpu, torch.int64, 16)
        assert request_why_not is not None and "int64" in request_why_not
        with pytest.raises(RuntimeError, match=f"backend '{name}' cannot serve"):
            select_backend(name, cpu, torch.int64, 16)


class _ConversionCounter:
    """Counts every tensor -> Python conversion (each one a device sync on a GPU)."""

    METHODS = ("item", "tolist", "__int__", "__bool__", "__index__", "__float__")

    def __init__(self, monkeypatch):
        self.calls: list[str] = []
        for name in self.METHODS:
            original = getattr(torch.Tensor, name)

            def counted(t, *args, _name=name, _original=original):
                self.calls.append(f"{_name} of {t.dtype} {tuple(t.shape)}")
                return _original(t, *args)

            monkeypatch.setattr(torch.Tensor, name, counted)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, pytest.param("auto", id="auto")])
@pytest.mark.parametrize("full", [False, True], ids=["short", "full"])
def test_lengths_are_read_once_per_call(backend, full, monkeypatch):
    model = _model(backend)
    x = torch.randn(6, 4, 5, requires_grad=True)
    lengths = torch.tensor([6, 6, 6, 6]) if full else torch.tensor([5, 2, 4, 1])
    counter = _ConversionCounter(monkeypatch)
    out, (h, c) = model(x, lengths=lengths)
    assert len(counter.calls) <= 1, counter.calls
    monkeypatch.undo()
    (out.sum() + h.sum() + c.sum()).backward()  # and the call's results are usable


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("backend", ["triton", "aten", "reference"])
def test_lengths_sync_the_gpu_once(backend):
    model = _model(backend, "cuda")
    x = torch.randn(6, 4, 5, device="cuda")
    lengths = torch.tensor([5, 2, 4, 1], device="cuda")
    model(x, lengths=lengths)  # warm up: first-call allocations and compilation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model(x, lengths=lengths)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [str(w.message) for w in caught if "synchroniz" in str(w.message).lower()]
    assert len(syncs) <= 1, syncs


def _pair(backend, device="cpu", **kwargs):
    torch.manual_seed(2)
    ref = nn.LSTM(5, 16, device=device, **kwargs)
    ours = fastlstm.LSTM(5, 16, device=device, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if p.values[0] != "triton"])
def test_autocast_values_match_nn_lstm_under_autocast(backend):
    """CPU autocast runs both in bfloat16; outputs and fp32 parameter gradients compared."""
    ref, ours = _pair(backend, bidirectional=True)
    x = torch.randn(6, 3, 5)
    cot = torch.randn(6, 3, 32)
    results = []
    for module in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, (h, _) = module(x)
        assert out.dtype == torch.bfloat16
        loss = (out.float() * cot).sum() + h.float().square().sum()
        results.append((out, torch.autograd.grad(loss, list(module.parameters()))))
    (out_r, g_r), (out_o, g_o) = results
    assert_close(out_o.float(), out_r.float(), "autocast output", atol=3e-2, rtol=3e-2)
    for (name, p), a, e in zip(ours.named_parameters(), g_o, g_r, strict=True):
        assert a.dtype == p.dtype == torch.float32
        assert_close(a, e, f"autocast d_{name}", atol=0.1, rtol=5e-2)


@pytest.mark.parametrize(
    ("backend", "device", "dtype"),
    [
        *[
            pytest.param(p.values[0], "cpu", torch.float16, marks=p.marks, id=f"{p.id}-fp16")
            for p in OP_BACKENDS
        ],
        pytest.param("triton", "cuda", torch.bfloat16, marks=GPU, id="triton-cuda-bf16"),
    ],
)
def test_autocast_values_match_the_reference_in_the_autocast_dtype(backend, device, dtype):
    """Under autocast the direction runs in the autocast dtype: the same as the reference
    run on inputs cast to that dtype by hand, and the fp32 parameters get fp32 gradients."""
    _, ours = _pair(backend, device)
    x = torch.randn(6, 3, 5, device=device)
    lengths = torch.tensor([6, 3, 1])
    cot = torch.randn(6, 3, 16, device=device)
    with torch.autocast(device, dtype=dtype):
        out, (_, c) = ours(x, lengths=lengths)
    assert out.dtype == dtype
    grads = torch.autograd.grad(
        (out.float() * cot).sum() + c.float().sum(), list(ours.parameters())
    )
    half = [p.detach().to(dtype).requires_grad_() for p in ours.parameters()]
    out_e, (_, c_e) = fastlstm.lstm(x.to(dtype), None, half, lengths=lengths, backend="reference")
    expected = torch.autograd.grad((out_e.float() * cot).sum() + c_e.float().sum(), half)
    assert_close(out.float(), out_e.float(), "autocast output", atol=2e-2, rtol=2e-2)
    for (name, p), a, e in zip(ours.named_parameters(), grads, expected, strict=True):
        assert a.dtype == p.dtype == torch.float32
        assert_close(a, e.float(), f"autocast d_{name}", atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_only_needed_gradients_have_the_right_values(backend):
    """Frozen parameters and an input without grad get None; the rest match nn.LSTM."""
    ref, ours = _pair(backend, bidirectional=True)
    for module in (ref, ours):
        module.weight_hh_l0.requires_grad_(False)
        module.bias_ih_l0_reverse.requires_grad_(False)
    x = torch.randn(6, 3, 5)
    lengths = torch.tensor([6, 2, 5])
    cot = torch.randn(6, 3, 32)
    out_o, (h_o, _) = ours(x, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out_r, (h_r, _) = ref(packed)
    out_r, _ = pad_packed_sequence(out_r, total_length=6)
    ((out_o * cot).sum() + h_o.sum()).backward()
    ((out_r * cot).sum() + h_r.sum()).backward()
    for (name, p_o), p_r in zip(ours.named_parameters(), ref.parameters(), strict=True):
        if not p_r.requires_grad:
            assert p_o.grad is None, name
            continue
        assert_close(p_o.grad, p_r.grad, f"d_{name}")


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("tf32", [False, True], ids=["exact-fp32", "tf32"])
def test_tf32_switch_follows_nn_lstm(tf32):
    """``torch.backends.cudnn.allow_tf32`` is nn.LSTM's precision switch, and the Triton
    backend's: set both ways explicitly, each compared with nn.LSTM under the same switch."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32, False
    try:
        torch.manual_seed(3)
        ref = nn.LSTM(64, 96, num_layers=2, device="cuda")
        ours = fastlstm.LSTM(64, 96, num_layers=2, device="cuda", backend="triton")
        ours.load_state_dict(ref.state_dict())
        exact = nn.LSTM(64, 96, num_layers=2, device="cuda", dtype=torch.float64)
        exact.load_state_dict(ref.state_dict())
        x = torch.randn(20, 16, 64, device="cuda")
        out_r, _ = ref(x)
        out_o, _ = ours(x)
        out_e, _ = exact(x.double())
        tol = 2e-2 if tf32 else 1e-4
        assert_close(out_o, out_r, "output vs nn.LSTM", atol=tol, rtol=tol)
        assert_close(out_o, out_e.float(), "output vs float64", atol=tol, rtol=tol)
        cot = torch.randn_like(out_r)
        g_r = torch.autograd.grad((out_r * cot).sum(), list(ref.parameters()))
        g_o = torch.autograd.grad((out_o * cot).sum(), list(ours.parameters()))
        for (name, _), a, e in zip(ours.named_parameters(), g_o, g_r, strict=True):
            assert_close(a, e, f"d_{name}", atol=10 * tol, rtol=10 * tol)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def test_backend_is_chosen_for_the_autocast_dtype():
    """The interpreter cannot run bfloat16: under bfloat16 autocast, naming triton on CPU
    tensors is refused instead of running kernels that would compute wrongly."""
    if backend_why_not("triton", "cpu", torch.float32, 16) is not None:
        pytest.skip("needs the Triton interpreter")
    m = fastlstm.LSTM(5, 16, backend="triton")
    x = torch.randn(4, 2, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(RuntimeError, match="bfloat16"):
        m(x)
