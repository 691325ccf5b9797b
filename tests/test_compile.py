"""torch.compile(fullgraph=True) traces a model holding fastlstm.LSTM with no graph break."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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
