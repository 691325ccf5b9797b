"""The sentiment classifier: embedding → fastlstm.LSTM (fed lengths) → linear → one logit."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

import fastlstm
from fastlstm.data.text import PAD_INDEX

__all__ = ["PRESETS", "SentimentClassifier"]

# Model presets by name. "exercise" has the size of the teaching exercise this project is
# measured against (vocabulary 5,000 + 2 specials, embedding 40, hidden 30: 208,751
# parameters); it differs only where that costs no parameters: max pooling over time instead
# of the last state, and dropout (pooling="last", dropout=0.0 gives the exercise's head).
# "default" is the stronger model under 1M parameters.
PRESETS: dict[str, dict[str, Any]] = {
    "exercise": {
        "vocab_max_size": 5000,
        "embedding_dim": 40,
        "hidden_size": 30,
        "num_layers": 1,
        "bidirectional": False,
        "dropout": 0.25,
        "pooling": "max",
    },
    "default": {
        "vocab_max_size": 10000,
        "embedding_dim": 64,
        "hidden_size": 64,
        "num_layers": 1,
        "bidirectional": True,
        "dropout": 0.3,
        "pooling": "max",
    },
}
POOLINGS = ("last", "max", "mean")


class SentimentClassifier(nn.Module):
    """Binary sentiment classifier over padded token indices.

    Args:
        vocab_size: rows of the embedding table (index 0 is padding).
        embedding_dim: embedding width, the LSTM's input size.
        hidden_size: LSTM hidden size per direction.
        num_layers: stacked LSTM layers.
        bidirectional: run each layer in both directions.
        dropout: dropout on the embeddings, between LSTM layers and before the linear head.
        backend: the fastlstm backend ("auto", "reference", "aten", "triton").
        pooling: how a review becomes one vector: ``"last"`` the final hidden state of
            each direction (as the exercise), ``"max"``/``"mean"`` over valid time steps
            of the last layer's output.
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        backend: str = "auto",
        pooling: str = "last",
    ) -> None:
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (two specials + a word), got {vocab_size}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._config = {
            "vocab_size": vocab_size,
            "embedding_dim": embedding_dim,
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "bidirectional": bidirectional,
            "dropout": dropout,
            "backend": backend,
            "pooling": pooling,
        }
        self.pooling = pooling
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_INDEX)
        self.lstm = fastlstm.LSTM(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
            backend=backend,
        )
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * (2 if bidirectional else 1), 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``SentimentClassifier(**model.config)`` rebuilds the model."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SentimentClassifier:
        return cls(**config)

    @property
    def last_backend(self) -> str | None:
        """The LSTM backend that ran the most recent forward."""
        return self.lstm.last_backend

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Logits ``[B]`` for ``tokens [T, B]`` (padded with 0) and ``lengths [B]``."""
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [T, B], got shape {tuple(tokens.shape)}")
        if lengths.shape != (tokens.shape[1],):
            raise ValueError(
                f"lengths must be [B] = [{tokens.shape[1]}], got shape {tuple(lengths.shape)}"
            )
        # An empty review reads one padding step (a zero embedding) instead of failing.
        lengths = lengths.clamp(min=1).to(device=tokens.device, dtype=torch.int64)
        x = self.dropout(self.embedding(tokens))  # [T, B, E]
        out, (h_n, _) = self.lstm(x, lengths=lengths)  # [T, B, D*H], [L*D, B, H]
        if self.pooling == "last":
            d = 2 if self.lstm.bidirectional else 1
            feat = torch.cat(list(h_n[-d:]), dim=-1)  # [B, D*H]
        else:
            valid = (
                torch.arange(out.shape[0], device=out.device).unsqueeze(1) < lengths.unsqueeze(0)
            ).unsqueeze(-1)  # [T, B, 1]
            if self.pooling == "max":
                feat = out.masked_fill(~valid, float("-inf")).amax(0)  # [B, D*H]
            else:
                feat = out.sum(0) / lengths.unsqueeze(1).to(out.dtype)  # [B, D*H]
        return self.head(self.dropout(feat)).squeeze(-1)  # [B]

    @torch.no_grad()
    def predict_proba(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Probability that each review is positive, ``[B]`` fp32 (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        try:
            return torch.sigmoid(self(tokens, lengths).float())
        finally:
            self.train(was_training)
