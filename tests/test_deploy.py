"""The deployment paths nn.LSTM users rely on, each against nn.LSTM with copied weights.

TorchScript (script and trace, saved and loaded), ONNX (the legacy and the dynamo exporter,
run in ONNX Runtime, dynamic T and B, with lengths), dynamic quantization, and what loading a
saved file needs. torch.compile and torch.export are in test_compile.py.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.ao.quantization import quantize_dynamic
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

import fastlstm
from fastlstm.quantized import DynamicQuantizedLSTM

from helpers import assert_close, backend_why_not

# torch.jit.script and torch.jit.trace warn that TorchScript is deprecated; it is still used.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*` is deprecated:DeprecationWarning")

TRITON = pytest.param(
    "triton",
    id="triton",
    marks=pytest.mark.skipif(
        backend_why_not("triton") is not None, reason=str(backend_why_not("triton"))
    ),
)


def make_pair(backend: str = "auto", input_size: int = 3, hidden: int = 5, **kwargs):
    ref = nn.LSTM(input_size, hidden, **kwargs)
    ours = fastlstm.LSTM(input_size, hidden, backend=backend, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def packed_reference(ref: nn.LSTM, x: Tensor, lengths: Tensor, hx=None):
    """nn.LSTM on the packed sequence, padded back: what ``lengths=`` must give."""
    bf = ref.batch_first
    packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
    out, state = ref(packed, hx)
    out, _ = pad_packed_sequence(out, batch_first=bf, total_length=x.shape[1 if bf else 0])
    return out, state


class Holder(nn.Module):
    """A user's model: an LSTM (called with lengths when given) and a linear head."""

    def __init__(self, lstm: nn.Module):
        super().__init__()
        self.lstm = lstm
        D = 2 if lstm.bidirectional else 1
        self.head = nn.Linear(D * (lstm.proj_size or lstm.hidden_size), 2)

    def forward(self, x: Tensor, lengths: Tensor | None = None):
        if lengths is None:
            out, (h, c) = self.lstm(x)
        else:
            out, (h, c) = self.lstm(x, lengths=lengths)
        return self.head(out), h, c


class PackedHolder(nn.Module):
    def __init__(self, lstm: nn.Module):
        super().__init__()
        self.lstm = lstm

    def forward(self, x: PackedSequence):
        return self.lstm(x)


def holder_pair(backend: str = "auto", **kwargs):
    ref, ours = make_pair(backend, **kwargs)
    ref_model = Holder(ref)
    model = Holder(ours)
    model.head.load_state_dict(ref_model.head.state_dict())
    return ref_model, model


def flat(result) -> list[Tensor]:
    """``output, (h, c)`` or ``head, h, c`` as a list of tensors."""
    out = []
    for r in result:
        out.extend(flat(r) if isinstance(r, (tuple, list)) else [r])
    return out


# --- TorchScript: script --------------------------------------------------------------------

SCRIPT_CONFIGS = [
    pytest.param(dict(), id="L1"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), id="L2-bidir-bf"),
    pytest.param(dict(proj_size=3, bidirectional=True), id="proj3-bidir"),
]


@pytest.mark.parametrize("kwargs", SCRIPT_CONFIGS)
def test_script_matches_nn_lstm_and_round_trips(kwargs):
    ref_model, model = holder_pair(**kwargs)
    scripted = torch.jit.script(model)
    assert type(model.lstm) is fastlstm.LSTM  # scripting swapped nothing in the eager model
    bf = model.lstm.batch_first
    x = torch.randn(4, 6, 3) if bf else torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 2, 5, 1])
    out, (h, c) = packed_reference(ref_model.lstm, x, lengths)
    for name, got, want in [
        ("padded", scripted(x), ref_model(x)),
        ("lengths", scripted(x, lengths), (ref_model.head(out), h, c)),
    ]:
        for part, g, w in zip(("head", "h_n", "c_n"), got, want, strict=True):
            assert_close(g, w, f"scripted {name} {part}")

    packed = pack_padded_sequence(x, lengths, batch_first=bf, enforce_sorted=False)
    got = torch.jit.script(PackedHolder(model.lstm))(packed)
    want = ref_model.lstm(packed)
    assert type(got[0]).__name__ == "PackedSequence"  # TorchScript's own named tuple
    assert_close(got[0].data, want[0].data, "scripted packed output")
    assert_close(got[1][0], want[1][0], "scripted packed h_n")
    assert_close(got[1][1], want[1][1], "scripted packed c_n")

    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for a, b in zip(loaded(x, lengths), scripted(x, lengths), strict=True):
        assert torch.equal(a, b)


def _script_lstm_calls(ref: nn.LSTM, ours: fastlstm.LSTM):
    """Every call form through a scripted holder: (name, scripted result, nn.LSTM result)."""

    class Calls(nn.Module):
        def __init__(self, lstm):
            super().__init__()
            self.lstm = lstm

        def forward(
            self, x: Tensor, hx: tuple[Tensor, Tensor], lengths: Tensor, x1: Tensor
        ) -> list[Tensor]:
            a, (ah, ac) = self.lstm(x)
            b, (bh, bc) = self.lstm(x, hx)
            c, (ch, cc) = self.lstm(x, hx, lengths=lengths)
            d, (dh, dc) = self.lstm(x1)  # unbatched
            return [a, ah, ac, b, bh, bc, c, ch, cc, d, dh, dc]

    return Calls(ours), Calls(ref)


@pytest.mark.parametrize("kwargs", SCRIPT_CONFIGS)
def test_scripted_lstm_call_forms_match_nn_lstm(kwargs):
    ref, ours = make_pair(**kwargs)
    calls, _ = _script_lstm_calls(ref, ours)
    scripted = torch.jit.script(calls)
    bf = ours.batch_first
    x = torch.randn(4, 6, 3) if bf else torch.randn(6, 4, 3)
    D = 2 if ours.bidirectional else 1
    P = ours.proj_size or ours.hidden_size
    hx = (torch.randn(ours.num_layers * D, 4, P), torch.randn(ours.num_layers * D, 4, 5))
    lengths = torch.tensor([6, 2, 5, 1])
    x1 = torch.randn(6, 3)
    got = scripted(x, hx, lengths, x1)
    want = [
        *flat(ref(x)),
        *flat(ref(x, hx)),
        *flat(packed_reference(ref, x, lengths, hx)),
        *flat(ref(x1)),
    ]
    names = [f"{form} {t}" for form in ("padded", "hx", "lengths", "unbatched") for t in "ohc"]
    for name, g, w in zip(names, got, want, strict=True):
        assert_close(g, w, f"scripted {name}")


def test_scripted_lstm_shares_the_parameters_and_trains_as_nn_lstm():
    ref, ours = make_pair(num_layers=2, bidirectional=True)
    scripted = torch.jit.script(Holder(ours))
    for name, p in ours.named_parameters():
        assert getattr(scripted.lstm, name) is p, f"{name} is a copy, not the parameter"
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 1, 3])
    head_ref = Holder(ref)
    head_ref.head.load_state_dict(scripted.head.state_dict())
    out_ref, (h_ref, c_ref) = packed_reference(ref, x, lengths)
    for out, h, c in (scripted(x, lengths), (head_ref.head(out_ref), h_ref, c_ref)):
        (out.square().sum() + h.sum() + c.sum()).backward()
    for (name, p), q in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert_close(p.grad, q.grad, f"scripted d_{name}")


def test_script_of_a_bare_lstm_compiles_as_nn_lstm_does():
    # As for nn.LSTM, the overloaded forward of a bare scripted LSTM is for script callers.
    for module in (nn.LSTM(3, 4), fastlstm.LSTM(3, 4)):
        scripted = torch.jit.script(module)
        assert isinstance(scripted, torch.jit.ScriptModule)


def test_scripted_lstm_rejects_lengths_with_a_packed_sequence():
    class Both(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm = fastlstm.LSTM(3, 4)

        def forward(self, x: PackedSequence, lengths: Tensor):
            return self.lstm(x, lengths=lengths)

    scripted = torch.jit.script(Both())
    lengths = torch.tensor([3, 2])
    packed = pack_padded_sequence(torch.randn(3, 2, 3), lengths)
    with pytest.raises(Exception, match="already carries its lengths"):
        scripted(packed, lengths)


# --- TorchScript: trace ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["auto", "reference", TRITON])
def test_trace_save_load_matches_nn_lstm(backend):
    ref_model, model = holder_pair(backend, num_layers=2, bidirectional=True)
    x, lengths = torch.randn(6, 4, 3), torch.tensor([6, 2, 5, 1])
    traced = torch.jit.trace(model, (x, lengths))
    # In a trace each direction runs as the custom op over a recurrence pair: on the CPU the
    # fused aten op cannot, so auto runs the reference.
    graph = str(traced.inlined_graph)
    ran = "triton" if backend == "triton" else "reference"
    assert "fastlstm::lstm_direction" in graph and f'value="{ran}"' in graph
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    # Other sizes than traced: T, B and the lengths are inputs of the graph.
    x2, lengths2 = torch.randn(7, 3, 3, requires_grad=True), torch.tensor([2, 7, 4])
    got = loaded(x2, lengths2)
    with torch.no_grad():
        out_ref, (h_ref, c_ref) = packed_reference(ref_model.lstm, x2, lengths2)
        want = (ref_model.head(out_ref), h_ref, c_ref)
    for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
        assert_close(g, w, f"traced {name}")
    # The loaded module trains: its gradients are nn.LSTM's.
    x_ref = x2.detach().clone().requires_grad_()
    out_ref, (h_ref, c_ref) = packed_reference(ref_model.lstm, x_ref, lengths2)
    want = (ref_model.head(out_ref), h_ref, c_ref)
    grads = []
    for (out, h, c), inputs in (
        (got, [x2, *loaded.parameters()]),
        (want, [x_ref, *ref_model.parameters()]),
    ):
        grads.append(torch.autograd.grad(out.square().sum() + h.sum() + c.sum(), inputs))
    for k, (g, w) in enumerate(zip(*grads, strict=True)):
        assert_close(g, w, f"traced gradient {k}")


# --- what loading a saved file needs ----------------------------------------------------------


def test_saved_files_load_as_documented(tmp_path):
    """A scripted model loads without fastlstm; a traced one and an exported program need
    ``import fastlstm`` (the custom op) first."""
    model = Holder(fastlstm.LSTM(3, 4, bidirectional=True))
    x, lengths = torch.randn(5, 2, 3), torch.tensor([5, 3])
    torch.jit.save(torch.jit.script(model), tmp_path / "scripted.pt")
    torch.jit.save(torch.jit.trace(model, (x, lengths)), tmp_path / "traced.pt")
    T = torch.export.Dim("T", min=2)
    program = torch.export.export(model, (x, lengths), dynamic_shapes=({0: T}, None))
    torch.export.save(program, tmp_path / "program.pt2")
    expected = model(x, lengths)[0]
    torch.save((x, lengths, expected), tmp_path / "io.pt")
    script = textwrap.dedent(
        f"""
        import sys, torch
        root = {str(tmp_path)!r}
        x, lengths, expected = torch.load(root + "/io.pt")
        def same(out):
            assert torch.allclose(out, expected, atol=1e-5), (out - expected).abs().max()
        same(torch.jit.load(root + "/scripted.pt")(x, lengths)[0])
        assert "fastlstm" not in sys.modules
        for name, load in (("traced.pt", torch.jit.load), ("program.pt2", torch.export.load)):
            try:
                load(root + "/" + name)
            except Exception as err:  # torch.export names the op in a logged warning only
                assert name == "program.pt2" or "fastlstm" in str(err), err
            else:
                raise AssertionError(name + " loaded without fastlstm")
        import fastlstm
        same(torch.jit.load(root + "/traced.pt")(x, lengths)[0])
        same(torch.export.load(root + "/program.pt2").module()(x, lengths)[0])
        print("ok")
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # fastlstm must be importable in the child as it is here (an installed or checkout copy).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


# --- dynamic quantization ---------------------------------------------------------------------

QUANT_CONFIGS = [
    pytest.param(dict(), id="L1"),
    pytest.param(dict(num_layers=2, bidirectional=True, batch_first=True), id="L2-bidir-bf"),
]


@pytest.mark.parametrize("dtype", [torch.qint8, torch.float16], ids=["qint8", "fp16"])
@pytest.mark.parametrize("kwargs", QUANT_CONFIGS)
def test_quantize_dynamic_quantizes_as_nn_lstm(kwargs, dtype):
    ref_model, model = holder_pair(input_size=8, hidden=16, **kwargs)
    ref_model.eval()
    model.eval()
    q_ref = quantize_dynamic(ref_model, {nn.LSTM, nn.Linear}, dtype=dtype)
    q_ours = quantize_dynamic(model, {fastlstm.LSTM, nn.Linear}, dtype=dtype)
    assert type(q_ours.lstm) is DynamicQuantizedLSTM
    assert type(q_ours.head) is type(q_ref.head)
    bf = model.lstm.batch_first
    x = torch.randn(4, 7, 8) if bf else torch.randn(7, 4, 8)
    lengths = torch.tensor([7, 2, 5, 1])
    fp32 = flat(ref_model(x))
    got, want = flat(q_ours(x)), flat(q_ref(x))
    for name, g, w, f in zip(("output", "h_n", "c_n"), got, want, fp32, strict=True):
        # The same quantized module as nn.LSTM's: the same results, so the same error.
        assert torch.equal(g, w), f"quantized {name} differs from nn.LSTM's quantized"
        assert (g - f).abs().max() == (w - f).abs().max()
    # lengths= keeps working after the swap: nn.LSTM's quantized module on the packed input.
    got = flat(q_ours(x, lengths))
    out, h, c = flat(packed_reference(q_ref.lstm, x, lengths))
    for name, g, w in zip(("output", "h_n", "c_n"), got, (q_ref.head(out), h, c), strict=True):
        assert_close(g, w, f"quantized lengths {name}", atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "spec",
    [pytest.param(None, id="default-spec"), pytest.param({nn.LSTM, nn.Linear}, id="nn-spec")],
)
def test_quantize_dynamic_specs_naming_only_nn_lstm_leave_it_fp32(spec):
    # The spec matches exact types and fastlstm.LSTM is no nn.LSTM: documented, not silent.
    model = Holder(fastlstm.LSTM(8, 16)).eval()
    quantized = quantize_dynamic(model, spec, dtype=torch.qint8)
    assert type(quantized.lstm) is fastlstm.LSTM
    assert quantized.lstm.weight_ih_l0.dtype == torch.float32
    assert type(quantized.head) is torch.ao.nn.quantized.dynamic.Linear


def test_quantize_dynamic_with_proj_size_says_why_not():
    model = Holder(fastlstm.LSTM(8, 16, proj_size=4)).eval()
    with pytest.raises(ValueError, match="no projection"):
        quantize_dynamic(model, {fastlstm.LSTM}, dtype=torch.qint8)


# --- ONNX -------------------------------------------------------------------------------------

if os.environ.get("CI"):
    import onnxruntime  # CI installs the dev extra: a missing package must fail, not skip
else:
    onnxruntime = pytest.importorskip("onnxruntime")

ONNX_ATOL = 1e-5  # ONNX Runtime against nn.LSTM (measured about 2e-7)
ONNX_CONFIGS = [
    pytest.param(dict(num_layers=2, bidirectional=True), False, id="L2-bidir"),
    pytest.param(dict(batch_first=True), True, id="bf-hx"),
    pytest.param(dict(num_layers=2, dropout=0.5, bias=False), False, id="L2-dropout-nobias"),
]


def _run_onnx(path, inputs: list[Tensor]) -> list[Tensor]:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    assert len(names) == len(inputs), names
    feed = {n: t.detach().numpy() for n, t in zip(names, inputs, strict=True)}
    return [torch.from_numpy(a) for a in session.run(None, feed)]


def _export(model, args, path, dynamo: bool, dims: list[dict[int, str]]) -> None:
    names = [f"in{k}" for k in range(len(args))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            program = torch.onnx.export(
                model, args, dynamo=True, dynamic_shapes=tuple(dims), verbose=False
            )
            program.save(str(path))
        else:
            torch.onnx.export(
                model,
                args,
                str(path),
                dynamo=False,
                input_names=names,
                dynamic_axes={n: d for n, d in zip(names, dims, strict=True)},
            )


def _onnx_ops(path) -> list[str]:
    import onnx

    return [node.op_type for node in onnx.load(str(path)).graph.node]


EXPORTERS = [pytest.param(False, id="legacy"), pytest.param(True, id="dynamo")]


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize(("kwargs", "with_hx"), ONNX_CONFIGS)
def test_onnx_export_of_the_bare_lstm_matches_nn_lstm(tmp_path, dynamo, kwargs, with_hx):
    ref, ours = make_pair(**kwargs)
    ref.eval()
    ours.eval()
    bf = ours.batch_first
    D, L = 2 if ours.bidirectional else 1, ours.num_layers
    x = torch.randn(4, 6, 3) if bf else torch.randn(6, 4, 3)
    hx = (torch.randn(L * D, 4, 5), torch.randn(L * D, 4, 5))
    batch_dims = {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}
    args, dims = (x,), [batch_dims]
    if with_hx:
        args, dims = (x, hx[0], hx[1]), [batch_dims, {1: "B"}, {1: "B"}]
    model = ours if not with_hx else _WithState(ours)
    _export(model, args, tmp_path / "m.onnx", dynamo, dims)
    assert "LSTM" in _onnx_ops(tmp_path / "m.onnx")
    # Run at other sizes than exported: T and B are dynamic.
    x2 = torch.randn(3, 9, 3) if bf else torch.randn(9, 3, 3)
    h2 = (torch.randn(L * D, 3, 5), torch.randn(L * D, 3, 5))
    got = _run_onnx(tmp_path / "m.onnx", [x2, *h2] if with_hx else [x2])
    want = flat(ref(x2, h2 if with_hx else None))
    for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
        assert_close(g, w, f"ONNX {name}", atol=ONNX_ATOL, rtol=0)


class _WithState(nn.Module):
    def __init__(self, lstm):
        super().__init__()
        self.lstm = lstm

    def forward(self, x, h0, c0):
        return self.lstm(x, (h0, c0))


@pytest.mark.parametrize("dynamo", EXPORTERS)
@pytest.mark.parametrize(
    ("backend", "kwargs"),
    [
        pytest.param("auto", dict(num_layers=2, bidirectional=True), id="auto-L2-bidir"),
        pytest.param("reference", dict(batch_first=True), id="reference-bf"),
        pytest.param("triton", dict(bidirectional=True), id="triton-bidir", marks=TRITON.marks),
    ],
)
def test_onnx_export_with_lengths_matches_nn_lstm_on_packed_input(
    tmp_path, dynamo, backend, kwargs
):
    ref_model, model = holder_pair(backend, **kwargs)
    ref_model.eval()
    model.eval()
    bf = model.lstm.batch_first
    x = torch.randn(4, 6, 3) if bf else torch.randn(6, 4, 3)
    lengths = torch.tensor([6, 2, 5, 1])
    batch_dims = {0: "B", 1: "T"} if bf else {0: "T", 1: "B"}
    _export(model, (x, lengths), tmp_path / "m.onnx", dynamo, [batch_dims, {0: "B"}])
    ops = _onnx_ops(tmp_path / "m.onnx")
    assert "LSTM" in ops and not any("fastlstm" in op for op in ops)
    if not dynamo:  # (torch.export restores the attributes a traced forward set)
        assert model.lstm.last_backend == "onnx"
    x2 = torch.randn(3, 9, 3) if bf else torch.randn(9, 3, 3)
    lengths2 = torch.tensor([3, 9, 1])
    got = _run_onnx(tmp_path / "m.onnx", [x2, lengths2])
    out, (h, c) = packed_reference(ref_model.lstm, x2, lengths2)
    for name, g, w in zip(("head", "h_n", "c_n"), got, (ref_model.head(out), h, c), strict=True):
        assert_close(g, w, f"ONNX lengths {name}", atol=ONNX_ATOL, rtol=0)


@pytest.mark.parametrize("dynamo", EXPORTERS)
def test_onnx_export_with_proj_size_says_why_not(tmp_path, dynamo):
    model = fastlstm.LSTM(3, 5, proj_size=2).eval()
    with pytest.raises(Exception, match="no projection"):
        _export(model, (torch.randn(4, 2, 3),), tmp_path / "m.onnx", dynamo, [{0: "T"}])
