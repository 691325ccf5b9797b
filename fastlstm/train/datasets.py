"""A run's data: the seeded train/validation split, the vocabulary, the encoded datasets,
and each batch's way to the device."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from fastlstm.data import Corpus, ReviewDataset, Vocab, load_corpus, train_val_split
from fastlstm.train.config import TrainConfig

__all__ = [
    "SPLITS",
    "Datasets",
    "batch_to_device",
    "build_datasets",
    "encode_split",
    "split_indices",
]

SPLITS = ("train", "val", "test")


@dataclass
class Datasets:
    vocab: Vocab
    train: ReviewDataset
    val: ReviewDataset | None
    test: ReviewDataset | None
    load_seconds: float = 0.0


def split_indices(corpus: Corpus, val_fraction: float, seed: int) -> dict[str, Tensor]:
    """Review indices of ``train`` (without validation), ``val`` and ``test`` (if present).

    The one place the validation part is drawn: a seeded share of the training reviews, so
    ``fastlstm evaluate --split val`` scores exactly the reviews the run validated on.
    """
    all_train = corpus.split_indices("train")
    tr, va = train_val_split(len(all_train), val_fraction, seed)
    out = {"train": all_train[tr], "val": all_train[va]}
    if "test" in corpus.splits:
        out["test"] = corpus.split_indices("test")
    return out


def encode_split(
    corpus: Corpus, vocab: Vocab, indices: Tensor, max_length: int | None
) -> ReviewDataset:
    """The reviews ``indices`` encoded with ``vocab`` (first ``max_length`` tokens kept)."""
    return ReviewDataset(corpus.encode(vocab, indices, max_length), corpus.labels[indices])


def build_datasets(
    config: TrainConfig, corpus: Corpus | None = None, vocab: Vocab | None = None
) -> Datasets:
    """Load the corpus, split train/validation (seeded), build or reuse the vocabulary, encode.

    The vocabulary is built from the training part only (never from validation or test).
    """
    t0 = time.perf_counter()
    if corpus is None:
        if config.data is None:
            raise ValueError("config.data is not set: give the IMDB folder or archive")
        corpus = load_corpus(config.data, cache_dir=config.cache_dir, progress=config.progress)
    idx = split_indices(corpus, config.val_fraction, config.seed)
    if vocab is None:
        counts = corpus.token_counts(idx["train"])
        vocab = Vocab.build(counts, config.vocab_max_size, config.min_freq)
    data = {
        name: encode_split(corpus, vocab, idx[name], config.max_length)
        for name in SPLITS
        if name in idx and (name == "train" or len(idx[name]))
    }
    return Datasets(
        vocab=vocab,
        train=data["train"],
        val=data.get("val"),
        test=data.get("test"),
        load_seconds=time.perf_counter() - t0,
    )


def batch_to_device(
    batch: tuple[Tensor, Tensor, Tensor], device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """``(tokens, lengths, labels)`` from :func:`~fastlstm.data.collate`, ready for the model.

    Tokens and labels go to ``device`` in one copy each that does not wait for it (pinned
    first on CUDA, where only pinned memory copies asynchronously). Lengths stay on the
    host: the LSTM reads their values, which on a GPU would wait for every queued kernel;
    the model makes its own device copy from the pinned tensor for pooling.
    """
    tokens, lengths, labels = batch
    if device.type == "cuda":
        tokens, lengths, labels = tokens.pin_memory(), lengths.pin_memory(), labels.pin_memory()
    return (
        tokens.to(device, non_blocking=True),
        lengths,
        labels.to(device, non_blocking=True),
    )
