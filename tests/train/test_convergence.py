"""Convergence: the same tiny classifier, trained step by step with each LSTM backend, follows
the same loss curve (in the spirit of Liger-Kernel's convergence tests).

A kernel that is right on one call but slightly wrong in a gradient drifts over training;
comparing whole curves catches that, and the curve falling proves the model learns at all.
On a machine without CUDA the Triton kernels run under Triton's interpreter (conftest).
"""

import itertools

import pytest
import torch

from fastlstm import select_backend
from fastlstm.data import BucketBatchSampler, Vocab, collate, load_corpus, write_synthetic_imdb
from fastlstm.models import SentimentClassifier
from fastlstm.train.datasets import encode_split

from helpers import assert_close

STEPS = 16
BATCH = 16


@pytest.fixture(scope="module")
def train_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("imdb")
    corpus = load_corpus(
        write_synthetic_imdb(root, n_per_class=40, seed=5, max_len=8), use_cache=False
    )
    idx = corpus.split_indices("train")
    vocab = Vocab.build(corpus.token_counts(idx))
    return vocab, encode_split(corpus, vocab, idx, max_length=None)


def _loss_curve(backend: str, vocab: Vocab, dataset) -> torch.Tensor:
    """Training loss at every step of a fixed, seeded run (no dropout: the curve depends on
    the arithmetic alone)."""
    torch.manual_seed(0)
    model = SentimentClassifier(
        len(vocab), 16, 16, bidirectional=True, pooling="max_mean", backend=backend
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    sampler = BucketBatchSampler(dataset.lengths, BATCH, shuffle=True, seed=0)
    batches = itertools.chain.from_iterable(
        (sampler.set_epoch(e), list(sampler))[1] for e in itertools.count()
    )
    loss_fn = torch.nn.BCEWithLogitsLoss()
    losses = []
    for idx in itertools.islice(batches, STEPS):
        tokens, lengths, labels = collate([dataset[i] for i in idx])
        loss = loss_fn(model(tokens, lengths), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        assert model.last_backend == backend
    return torch.stack(losses)


@pytest.fixture(scope="module")
def reference_curve(train_set):
    curve = _loss_curve("reference", *train_set)
    # It learns: the last steps' loss is well below the first steps' (chance is ln 2).
    assert curve[-4:].mean() < 0.6 * curve[:4].mean(), curve
    return curve


def _can_run(backend: str) -> bool:
    try:
        select_backend(backend, torch.device("cpu"), torch.float32, 16)
    except (RuntimeError, ValueError):
        return False
    return True


@pytest.mark.parametrize("backend", ["aten", "triton"])
def test_loss_curve_matches_the_reference(train_set, reference_curve, backend):
    if not _can_run(backend):
        pytest.skip(f"backend {backend!r} cannot run here")
    expected = reference_curve
    actual = _loss_curve(backend, *train_set)
    # float32 rounding differs between backends and Adam amplifies it a little each step;
    # a wrong gradient would move the curve by far more than this.
    assert_close(actual, expected, f"{backend} loss curve", atol=1e-5, rtol=1e-4)
