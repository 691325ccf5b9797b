"""The sentiment classifier: embedding → fastlstm.LSTM (fed lengths) → linear → one logit."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

import fastlstm
from fastlstm.data.text import PAD_INDEX

__all__ = ["POOLINGS", "PRESETS", "ModelSettings", "SentimentClassifier"]

POOLINGS = ("last", "max", "mean", "max_mean")


@dataclass
class ModelSettings:
    """The classifier's architecture apart from its vocabulary size.

    The one list of model keys: :attr:`SentimentClassifier.config` is ``vocab_size`` plus
    these, :class:`fastlstm.train.TrainConfig` inherits them and ``fastlstm train`` offers an
    option for each. The defaults are the ``"default"`` preset's, except the two embedding
    dropouts, whose defaults keep the plain model (and configs saved before they existed):
    ``embedding_dropout`` follows ``dropout`` and ``token_dropout`` is off. See
    :class:`SentimentClassifier` for what each one means.
    """

    embedding_dim: int = 64
    hidden_size: int = 64
    num_layers: int = 1
    bidirectional: bool = True
    dropout: float = 0.3
    embedding_dropout: float | None = None
    token_dropout: float = 0.0
    pooling: str = "max"
    backend: str = "auto"

    def check(self) -> None:
        """Raise ``ValueError`` naming the first setting out of range."""
        for name in ("embedding_dim", "hidden_size", "num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {self.pooling!r}")
        for name in ("dropout", "embedding_dropout", "token_dropout"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")

    @property
    def effective_embedding_dropout(self) -> float:
        """The element-wise embedding dropout in effect: ``dropout`` unless set apart."""
        return self.dropout if self.embedding_dropout is None else self.embedding_dropout

    def model_kwargs(self, vocab_size: int) -> dict[str, Any]:
        """Keyword arguments of :class:`SentimentClassifier` for a vocabulary of ``vocab_size``."""
        names = [f.name for f in fields(ModelSettings)]
        return {"vocab_size": vocab_size, **{name: getattr(self, name) for name in names}}


# Model presets by name: the vocabulary size (words besides the two specials) and the
# architecture. "exercise" has the size of the teaching exercise this project is measured
# against (vocabulary 5,000 + 2 specials, embedding 40, hidden 30: 208,751 parameters); it
# differs only where that costs no parameters: max pooling over time instead of the last
# state, and dropout (pooling="last", dropout=0.0 gives the exercise's head). "default" is
# the stronger model under 1M parameters (docs/training.md has the measurements).
PRESETS: dict[str, dict[str, Any]] = {
    "exercise": {
        "vocab_max_size": 5000,
        **asdict(
            ModelSettings(
                embedding_dim=40, hidden_size=30, bidirectional=False, dropout=0.25, pooling="max"
            )
        ),
    },
    "default": {
        "vocab_max_size": 10000,
        **asdict(ModelSettings(embedding_dropout=0.0, token_dropout=0.25)),
    },
}


class SentimentClassifier(nn.Module):
    """Binary sentiment classifier over padded token indices.

    Args:
        vocab_size: rows of the embedding table (index 0 is padding).
        embedding_dim: embedding width, the LSTM's input size.
        hidden_size: LSTM hidden size per direction.
        num_layers: stacked LSTM layers.
        bidirectional: run each layer in both directions.
        dropout: dropout between LSTM layers and before the linear head, and on the
            embeddings unless ``embedding_dropout`` says otherwise.
        embedding_dropout: element-wise dropout on the embeddings; None: ``dropout``.
        token_dropout: probability of zeroing a token's whole embedding in training (the
            kept ones scaled by ``1 / (1 - p)``), before ``embedding_dropout``: the model
            must read a review's sentiment from more than a few memorised words.
        backend: the fastlstm backend ("auto", "reference", "aten", "triton").
        pooling: how a review becomes one vector: ``"last"`` the final hidden state of
            each direction (as the exercise), ``"max"``/``"mean"`` over valid time steps
            of the last layer's output, ``"max_mean"`` both side by side.
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
        token_dropout: float = 0.0,
        embedding_dropout: float | None = None,
    ) -> None:
        super().__init__()
        if vocab_size < 3:
            raise ValueError(f"vocab_size must be >= 3 (two specials + a word), got {vocab_size}")
        self.settings = ModelSettings(
            embedding_dim=embedding_dim,
            hidden_size=hidden_size,
            num_layers=num_layers,
            bidirectional=bidirectional,
            dropout=dropout,
            embedding_dropout=embedding_dropout,
            token_dropout=token_dropout,
            pooling=pooling,
            backend=backend,
        )
        self.settings.check()
        self.vocab_size = vocab_size
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
        self.embedding_dropout = nn.Dropout(self.settings.effective_embedding_dropout)
        # Dropout1d on [B, T, E] zeroes whole channels, here the T token vectors.
        self.token_dropout = nn.Dropout1d(token_dropout)
        features = hidden_size * (2 if bidirectional else 1) * (2 if pooling == "max_mean" else 1)
        self.head = nn.Linear(features, 1)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments: ``SentimentClassifier(**model.config)`` rebuilds the model."""
        return self.settings.model_kwargs(self.vocab_size)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SentimentClassifier:
        return cls(**config)

    @property
    def last_backend(self) -> str | None:
        """The LSTM backend that ran the most recent forward."""
        return self.lstm.last_backend

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        """Logits ``[B]`` for ``tokens [T, B]`` (padded with 0) and ``lengths [B]``.

        ``lengths`` may stay on the CPU while ``tokens`` are on a GPU (the trainer does so):
        nothing then waits for the GPU to read them.
        """
        if tokens.dim() != 2:
            raise ValueError(f"tokens must be [T, B], got shape {tuple(tokens.shape)}")
        if lengths.shape != (tokens.shape[1],):
            raise ValueError(
                f"lengths must be [B] = [{tokens.shape[1]}], got shape {tuple(lengths.shape)}"
            )
        x = self.embedding(tokens)  # [T, B, E]
        if self.settings.token_dropout > 0:
            x = self.token_dropout(x.transpose(0, 1)).transpose(0, 1)
        x = self.embedding_dropout(x)
        # An empty review reads one padding step (a zero embedding) instead of failing. The
        # LSTM gets the lengths where the caller keeps them: it reads their values to check
        # and trim, which for lengths on the GPU would wait for every queued kernel.
        out, (h_n, _) = self.lstm(x, lengths=lengths.clamp(min=1))  # [T, B, D*H], [L*D, B, H]
        if self.pooling == "last":
            d = 2 if self.lstm.bidirectional else 1
            feat = torch.cat(list(h_n[-d:]), dim=-1)  # [B, D*H]
        else:
            # Pooling needs them beside the outputs: one copy, which does not wait for the
            # device (from pinned memory, as the trainer's batches are on CUDA).
            steps = lengths.to(device=out.device, dtype=torch.int64, non_blocking=True)
            steps = steps.clamp(min=1)  # [B]
            valid = (
                torch.arange(out.shape[0], device=out.device).unsqueeze(1) < steps.unsqueeze(0)
            ).unsqueeze(-1)  # [T, B, 1]
            pooled = []
            if self.pooling in ("max", "max_mean"):
                pooled.append(out.masked_fill(~valid, float("-inf")).amax(0))  # [B, D*H]
            if self.pooling in ("mean", "max_mean"):
                pooled.append(out.sum(0) / steps.unsqueeze(1).to(out.dtype))  # [B, D*H]
            feat = torch.cat(pooled, dim=-1)  # [B, D*H] or [B, 2*D*H]
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
