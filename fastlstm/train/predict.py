"""Scoring raw review text with a trained classifier, in batches."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from fastlstm.data import UNK_INDEX, Vocab, collate, tokenize
from fastlstm.models.sentiment import SentimentClassifier
from fastlstm.train.datasets import batch_to_device

__all__ = ["ReviewError", "encode_reviews", "predict_texts"]


class ReviewError(ValueError):
    """A review cannot be scored meaningfully; ``index`` is its position (from 0)."""

    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


def encode_reviews(
    vocab: Vocab, texts: Sequence[str], max_length: int | None = None
) -> list[Tensor]:
    """Tokenize and encode every review; raises :class:`ReviewError` for an empty review
    or one without a single word the vocabulary knows (its score would mean nothing)."""
    encoded = []
    for i, text in enumerate(texts):
        tokens = tokenize(text)
        if not tokens:
            raise ReviewError(i, f"review {i + 1} is empty; give some text to score")
        ids = vocab.encode(tokens, max_length)
        if bool((ids == UNK_INDEX).all()):
            raise ReviewError(
                i,
                f"review {i + 1} ({text[:40]!r}) has no word the model knows, so its score "
                "would be meaningless; give an English movie review",
            )
        encoded.append(ids)
    return encoded


def predict_texts(
    model: SentimentClassifier,
    vocab: Vocab,
    texts: Sequence[str],
    max_length: int | None = None,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> list[float]:
    """Probability that each review in ``texts`` is positive, scored ``batch_size`` at a time.

    ``max_length`` truncates as in training (a checkpoint's ``meta["max_length"]``). The
    probabilities are read to the host once, after the last batch.
    """
    device = torch.device(device)
    encoded = encode_reviews(vocab, texts, max_length)
    probs: list[Tensor] = []
    for start in range(0, len(encoded), batch_size):
        batch = collate([(ids, 0) for ids in encoded[start : start + batch_size]])
        tokens, lengths, _ = batch_to_device(batch, device)
        probs.append(model.predict_proba(tokens, lengths))
    return torch.cat(probs).tolist() if probs else []
