"""The last places where nn.LSTM scripts could tell the swap apart, on every backend.

Also the module protocols nn.LSTM scripts lean on (copying, pickling, parametrizations,
activation checkpointing, jacrev, DDP, hooks), each against nn.LSTM.

Empty batches, double backward (``gradgradcheck`` of the reference is in
test_reference.py), ``torch.func`` per-sample gradients and whole-model
``torch.load(weights_only=True)``: each matches ``torch.nn.LSTM`` or, where a backend truly
cannot (the Triton kernels' backward is not differentiable), fails with an error that names
the backend that can.
"""

from __future__ import annotations

import copy
import io
import os
import pickle

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.utils import parametrizations, prune
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.utils.checkpoint import checkpoint

import fastlstm

from helpers import assert_close, backend_why_not


def _backend_param(name: str):
    why_not = backend_why_not(name, "cpu", torch.float32, 16)
    return pytest.param(
        name, id=name, marks=pytest.mark.skipif(why_not is not None, reason=str(why_not))
    )


BACKENDS = [_backend_param(b) for b in ("reference", "aten", "triton")]


def make_pair(backend: str, dtype=torch.float32, **kwargs):
    ref = nn.LSTM(3, 6, dtype=dtype, **kwargs)
    ours = fastlstm.LSTM(3, 6, dtype=dtype, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("batch_first", [False, True], ids=["tb", "bf"])
@pytest.mark.parametrize("with_lengths", [False, True], ids=["padded", "lengths"])
def test_empty_batch_matches_nn_lstm(backend, batch_first, with_lengths):
    kwargs = dict(num_layers=2, bidirectional=True, proj_size=4, batch_first=batch_first)
    ref, ours = make_pair(backend, **kwargs)
    x = torch.randn((0, 5, 3) if batch_first else (5, 0, 3))
    results = []
    for module in (ref, ours):
        xi = x.clone().requires_grad_()
        if module is ours and with_lengths:
            out, (h, c) = module(xi, lengths=torch.zeros(0, dtype=torch.int64))
        else:
            out, (h, c) = module(xi)
        (out.sum() + h.sum() + c.sum()).backward()
        results.append((out, h, c, xi.grad, [p.grad for p in module.parameters()]))
    (out_r, h_r, c_r, dx_r, dp_r), (out_o, h_o, c_o, dx_o, dp_o) = results
    assert out_o.shape == out_r.shape and h_o.shape == h_r.shape and c_o.shape == c_r.shape
    assert ours.last_backend == "reference"  # an empty batch never reaches a kernel
    assert_close(dx_o, dx_r, "d_input")
    for (name, _), g_o, g_r in zip(ours.named_parameters(), dp_o, dp_r, strict=True):
        assert g_o is not None, f"d_{name} is None; nn.LSTM gives zeros"
        assert_close(g_o, g_r, f"d_{name}")


def test_empty_packed_sequence_is_rejected_by_torch_itself():
    # nn.LSTM cannot be given a PackedSequence of 0 sequences: PyTorch refuses to build one.
    with pytest.raises(RuntimeError, match="Cannot pack empty tensors"):
        pack_padded_sequence(torch.randn(5, 0, 3), torch.zeros(0, dtype=torch.int64))


def _gradient_penalty_grads(module, x, lengths, cot):
    """Gradients of a gradient penalty (double backward) w.r.t. the module's parameters."""
    xi = x.clone().requires_grad_()
    if isinstance(module, fastlstm.LSTM):
        out, (h, c) = module(xi, lengths=lengths)
    else:
        packed = pack_padded_sequence(xi, lengths, enforce_sorted=False)
        out, (h, c) = module(packed)
        out, _ = pad_packed_sequence(out, total_length=x.shape[0])
    loss = (out * cot).sum() + h.square().sum() + c.sum()
    (dx,) = torch.autograd.grad(loss, xi, create_graph=True)
    return torch.autograd.grad(dx.square().sum(), list(module.parameters()))


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "triton"])
def test_double_backward_matches_nn_lstm(backend):
    ref, ours = make_pair(backend, torch.float64, bidirectional=True, proj_size=4)
    x = torch.randn(5, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([5, 2, 4])
    cot = torch.randn(5, 3, 8, dtype=torch.float64)
    expected = _gradient_penalty_grads(ref, x, lengths, cot)
    actual = _gradient_penalty_grads(ours, x, lengths, cot)
    for (name, _), a, e in zip(ours.named_parameters(), actual, expected, strict=True):
        assert_close(a, e, f"dd_{name}")


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] == "triton"])
def test_triton_refuses_double_backward_naming_the_backend_that_can(backend):
    _, ours = make_pair(backend)
    x = torch.randn(4, 2, 3, requires_grad=True)
    out, _ = ours(x)
    with pytest.raises(RuntimeError, match=r"double backward.*backend='reference'"):
        torch.autograd.grad(out.square().sum(), x, create_graph=True)


def _loss(module, params, x_i, t_i):
    out, (h, _) = functional_call(module, params, (x_i.unsqueeze(0),))
    return (out.squeeze(0) * t_i).sum() + h.square().sum()


def _per_sample_grads(module, x, target):
    params = {n: p.detach() for n, p in module.named_parameters()}
    per_sample = grad(lambda p, x_i, t_i: _loss(module, p, x_i, t_i))
    return vmap(per_sample, in_dims=(None, 0, 0))(params, x, target)


def _per_sample_grads_by_loop(module, x, target):
    """nn.LSTM one sample at a time with plain autograd (nn.LSTM's proj path has no vmap)."""
    params = dict(module.named_parameters())
    rows = [
        torch.autograd.grad(_loss(module, params, x_i, t_i), list(params.values()))
        for x_i, t_i in zip(x, target, strict=True)
    ]
    return {n: torch.stack(g) for n, g in zip(params, zip(*rows, strict=True), strict=True)}


@pytest.mark.parametrize("backend", [p for p in BACKENDS if p.values[0] != "triton"])
@pytest.mark.parametrize(
    "kwargs", [dict(bidirectional=True), dict(num_layers=2)], ids=["bidir", "L2"]
)
def test_vmap_per_sample_grads_match_nn_lstm(backend, kwargs):
    ref, ours = make_pair(backend, batch_first=True, **kwargs)
    D = 2 if ours.bidirectional else 1
    x, target = torch.randn(5, 4, 3), torch.randn(5, 4, 6 * D)
    expected = _per_sample_grads(ref, x, target)
    actual = _per_sample_grads(ours, x, target)
    assert actual.keys() == expected.keys()
    for name, e in expected.items():
        assert_close(actual[name], e, f"per-sample d_{name}", atol=1e-5, rtol=1e-4)


def test_vmap_per_sample_grads_with_proj_on_reference():
    ref, ours = make_pair("reference", batch_first=True, bidirectional=True, proj_size=4)
    x, target = torch.randn(3, 4, 3), torch.randn(3, 4, 8)
    expected = _per_sample_grads_by_loop(ref, x, target)
    actual = _per_sample_grads(ours, x, target)
    for name, e in expected.items():
        assert_close(actual[name], e, f"per-sample d_{name}", atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("backend", "kwargs"),
    [
        pytest.param(p.values[0], kw, id=f"{p.values[0]}-{name}", marks=p.marks)
        for p in BACKENDS
        for name, kw in (("plain", {}), ("proj", dict(proj_size=4)))
        if p.values[0] == "triton" or (p.values[0] == "aten" and kw)
    ],
)
def test_backends_that_cannot_run_torch_func_say_so(backend, kwargs):
    _, ours = make_pair(backend, batch_first=True, **kwargs)
    x, target = torch.randn(2, 4, 3), torch.randn(2, 4, ours.proj_size or 6)
    with pytest.raises(RuntimeError, match=r"torch\.func.*backend='reference'"):
        _per_sample_grads(ours, x, target)


def test_auto_runs_torch_func_with_proj_on_the_reference():
    _, ours = make_pair("auto", batch_first=True, proj_size=4)
    x, target = torch.randn(2, 4, 3), torch.randn(2, 4, 4)
    _per_sample_grads(ours, x, target)
    assert ours.last_backend == "reference"


class Tagger(nn.Module):
    """A user's model holding the swap: its author allowlists their own classes (as they would
    with nn.LSTM inside), and fastlstm.LSTM needs no entry."""

    def __init__(self):
        super().__init__()
        self.lstm = fastlstm.LSTM(3, 5, num_layers=2, bidirectional=True, backend="reference")
        self.head = nn.Linear(10, 2)

    def forward(self, x):
        return self.head(self.lstm(x)[0])


def test_whole_model_round_trips_under_weights_only():
    model = Tagger()
    x = torch.randn(4, 2, 3)
    expected = model(x)
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    with torch.serialization.safe_globals([Tagger, nn.Linear]):
        loaded = torch.load(buf, weights_only=True)
    assert isinstance(loaded.lstm, fastlstm.LSTM) and loaded.lstm.backend == "reference"
    assert torch.equal(loaded(x), expected)


def test_bare_lstm_loads_under_the_default_weights_only():
    m = fastlstm.LSTM(3, 4, proj_size=2)
    buf = io.BytesIO()
    torch.save(m, buf)
    buf.seek(0)
    loaded = torch.load(buf)  # weights_only=True is PyTorch's default
    x = torch.randn(2, 1, 3)
    assert torch.equal(loaded(x)[0], m(x)[0])


def _protocol_outputs(name: str, module: nn.Module, x: Tensor):
    """``module`` through one of the protocols nn.LSTM scripts use: (output, gradients)."""
    if name == "deepcopy":
        module = copy.deepcopy(module)
    elif name == "pickle":
        module = pickle.loads(pickle.dumps(module))
    elif name in ("weight_norm", "spectral_norm"):
        torch.manual_seed(1)  # spectral_norm draws its power-iteration start
        getattr(parametrizations, name)(module, "weight_hh_l0")
    elif name == "prune":
        prune.l1_unstructured(module, "weight_ih_l0", amount=0.5)
    x = x.clone().requires_grad_()
    if name == "checkpoint":
        out = checkpoint(lambda t: module(t)[0], x, use_reentrant=False)
    elif name == "jacrev":
        jac = torch.func.jacrev(lambda t: module(t)[0].sum())(x)
        return jac, [jac]
    elif name == "ddp":
        out = nn.parallel.DistributedDataParallel(module)(x)[0]
    else:
        out = module(x)[0]
    grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    return out, list(grads)


PROTOCOLS = [
    "deepcopy", "pickle", "weight_norm", "spectral_norm", "prune", "checkpoint", "jacrev", "ddp",
]  # fmt: skip


@pytest.fixture(scope="module")
def gloo_group():
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("name", PROTOCOLS)
def test_module_protocols_match_nn_lstm(name, request):
    if name == "ddp":
        request.getfixturevalue("gloo_group")
    ref, ours = make_pair("auto", num_layers=2, bidirectional=True)
    x = torch.randn(4, 2, 3)
    out_o, grads_o = _protocol_outputs(name, ours, x)
    out_r, grads_r = _protocol_outputs(name, ref, x)
    assert_close(out_o, out_r, f"{name} output")
    for k, (g_o, g_r) in enumerate(zip(grads_o, grads_r, strict=True)):
        assert_close(g_o, g_r, f"{name} gradient {k}")


def test_forward_hooks_see_lengths_and_may_replace_the_output():
    _, ours = make_pair("auto")
    seen = []
    ours.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(sorted(kwargs)), with_kwargs=True
    )
    ours.register_forward_hook(lambda mod, args, out: (out[0] * 0, out[1]))
    out, _ = ours(torch.randn(4, 2, 3), lengths=torch.tensor([4, 2]))
    assert seen == [["lengths"]] and not out.any()
