"""torch.compile(fullgraph=True) traces a model holding fastlstm.LSTM with no graph break;
torch.export records it, with dynamic T, and its programs check the lengths when they run."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

import fastlstm

from helpers import assert_close


class Classifier(nn.Module):
    def __init__(self, **lstm_kwargs):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lstm = fastlstm.LSTM(8, 12, **lstm_kwargs)
        D = 2 if self.lstm.bidirectional else 1
        self.fc = nn.Linear(D * (self.lstm.proj_size or 12), 1)

    def forward(self, tokens, lengths=None):
        out, (h, _) = self.lstm(self.emb(tokens), lengths=lengths)
        last = torch.cat(list(h[-(2 if self.lstm.bidirectional else 1) :]), -1)
        return self.fc(last).squeeze(-1) + out.mean()


@pytest.mark.parametrize(
    ("lstm_kwargs", "with_lengths"),
    [
        pytest.param(dict(num_layers=2, bidirectional=True), True, id="L2-bidir-lengths"),
        pytest.param(dict(proj_size=5), False, id="L1-proj5-padded"),
    ],
)
def test_compile_fullgraph_matches_eager(lstm_kwargs, with_lengths):
    torch._dynamo.reset()
    model = Classifier(**lstm_kwargs)
    tokens = torch.randint(0, 50, (7, 4))
    lengths = torch.tensor([7, 3, 5, 1]) if with_lengths else None

    eager = model(tokens, lengths)
    eager.sum().backward()
    eager_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    compiled = torch.compile(model, fullgraph=True)
    out = compiled(tokens, lengths)
    out.sum().backward()
    assert_close(out, eager, "compiled output")
    for (name, p), g in zip(model.named_parameters(), eager_grads, strict=True):
        assert_close(p.grad, g, f"compiled d_{name}")


def test_custom_op_passes_opcheck():
    from fastlstm.backends.compiled import lstm_direction_op

    T, B, I, H = 3, 2, 4, 5
    args = (
        torch.randn(T, B, I, requires_grad=True),
        torch.randn(4 * H, I, requires_grad=True),
        torch.randn(4 * H, H, requires_grad=True),
        torch.randn(4 * H, requires_grad=True),
        torch.randn(4 * H, requires_grad=True),
        None,
        torch.randn(B, H, requires_grad=True),
        torch.randn(B, H, requires_grad=True),
        torch.tensor([3, 2]),
        True,
        "reference",
        "",
        False,
    )
    torch.library.opcheck(lstm_direction_op, args)


def _packed_pair(**kwargs):
    ref = nn.LSTM(3, 5, **kwargs)
    ours = fastlstm.LSTM(3, 5, **kwargs)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize(
    ("enforce_sorted", "with_hx"),
    [pytest.param(True, False, id="sorted-zeros"), pytest.param(False, True, id="unsorted-hx")],
)
def test_compile_fullgraph_takes_a_packed_sequence(enforce_sorted, with_hx):
    # A PackedSequence's batch size is data (batch_sizes[0]): no Python branch may read it.
    torch._dynamo.reset()
    ref, ours = _packed_pair(num_layers=2, bidirectional=True)
    lengths = torch.tensor([6, 4, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 4])
    x = torch.randn(6, 4, 3)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted)
    hx = (torch.randn(4, 4, 5), torch.randn(4, 4, 5)) if with_hx else None

    def run(lstm, p):
        out, (h, c) = lstm(p, hx)
        return out.data, h, c

    compiled = torch.compile(lambda p: run(ours, p), fullgraph=True)
    got, want = compiled(packed), run(ref, packed)
    grads = []
    for (out, h, c), params in ((got, ours.parameters()), (want, ref.parameters())):
        loss = out.square().sum() + h.sum() + c.sum()
        grads.append(torch.autograd.grad(loss, list(params)))
    for name, g, w in zip(("output", "h_n", "c_n"), got, want, strict=True):
        assert_close(g, w, f"compiled packed {name}")
    for (name, _), g, w in zip(ours.named_parameters(), *grads, strict=True):
        assert_close(g, w, f"compiled packed d_{name}")


class _WithLengths(nn.Module):
    def __init__(self, bidirectional: bool = True):
        super().__init__()
        self.lstm = fastlstm.LSTM(3, 5, bidirectional=bidirectional)

    def forward(self, x, lengths):
        out, (h, c) = self.lstm(x, lengths=lengths)
        return out, h, c


@pytest.mark.parametrize("bad", [0, 8], ids=["zero", "above-T"])
def test_exported_program_checks_lengths_when_it_runs(bad):
    model = _WithLengths()
    x, lengths = torch.randn(7, 3, 3), torch.tensor([7, 2, 5])
    T = torch.export.Dim("T", min=2)
    program = torch.export.export(model, (x, lengths), dynamic_shapes=({0: T}, None))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    buf.seek(0)
    run = torch.export.load(buf).module()
    x2, lengths2 = torch.randn(9, 3, 3), torch.tensor([9, 1, 4])  # another T
    for g, w in zip(run(x2, lengths2), model(x2, lengths2), strict=True):
        assert_close(g, w, "exported program output")
    with pytest.raises(RuntimeError, match="every length must be between 1 and the sequence"):
        run(x, torch.tensor([7, bad, 5]))
    with pytest.raises(ValueError, match="between 1 and the sequence length 7"):
        model(x, torch.tensor([7, bad, 5]))  # eager says the same


def test_compile_dynamic_checks_lengths_when_it_runs():
    torch._dynamo.reset()
    model = _WithLengths(bidirectional=False)
    compiled = torch.compile(model, dynamic=True, fullgraph=True)
    for T in (5, 8):
        x, lengths = torch.randn(T, 3, 3), torch.tensor([T, 1, 3])
        for g, w in zip(compiled(x, lengths), model(x, lengths), strict=True):
            assert_close(g, w, f"compiled dynamic output at T={T}")
    with pytest.raises(RuntimeError, match="every length must be between 1 and the sequence"):
        compiled(torch.randn(6, 3, 3), torch.tensor([7, 1, 3]))
