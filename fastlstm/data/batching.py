"""Length-bucketed batching: batches of similar lengths so little compute goes into padding."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from fastlstm.data.text import PAD_INDEX

__all__ = ["BucketBatchSampler", "ReviewDataset", "collate", "train_val_split"]


class ReviewDataset(Dataset):
    """Encoded reviews (int64 ``[L]`` each) with their 0/1 labels."""

    def __init__(self, reviews: Sequence[Tensor], labels: Sequence[int] | Tensor) -> None:
        if len(reviews) != len(labels):
            raise ValueError(f"{len(reviews)} reviews but {len(labels)} labels")
        self.reviews = list(reviews)
        self.labels = torch.as_tensor(labels, dtype=torch.int64)
        self.lengths = torch.tensor([len(r) for r in self.reviews], dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.reviews)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.reviews[i], int(self.labels[i])


def collate(batch: Sequence[tuple[Tensor, int]]) -> tuple[Tensor, Tensor, Tensor]:
    """Pad to the longest review: ``tokens [T, B]`` int64, ``lengths [B]``, ``labels [B]`` fp32.

    An empty review keeps length 0 (its padding step gives the model nothing to read); the
    model maps that to its initial state, so the batch still runs.
    """
    lengths = torch.tensor([len(r) for r, _ in batch], dtype=torch.int64)  # [B]
    tokens = torch.full((max(int(lengths.max()), 1), len(batch)), PAD_INDEX, dtype=torch.int64)
    for b, (r, _) in enumerate(batch):
        tokens[: len(r), b] = r
    labels = torch.tensor([y for _, y in batch], dtype=torch.float32)
    return tokens, lengths, labels


class BucketBatchSampler(Sampler[list[int]]):
    """Yields batches of indices whose lengths are close, in a shuffled order.

    Each epoch: shuffle all indices, cut them into pools of ``pool_batches`` batches, sort
    each pool by length and cut it into batches, then shuffle the batches. Within a batch
    lengths are similar (little padding); across epochs batch composition still varies.
    Without ``shuffle`` the batches are the globally length-sorted order (for evaluation).

    With ``num_replicas > 1`` (data-parallel training) every replica gets the same number
    of batches: the batch list is padded by repeating its first batches, then dealt
    round-robin. Call :meth:`set_epoch` before each epoch, as with ``DistributedSampler``.

    Args:
        lengths: length of every example, ``[N]``.
        batch_size: examples per batch (per replica).
        shuffle: randomise pools and batch order (training) or not (evaluation).
        seed: base seed; epoch ``e`` uses ``seed + e``, so runs are reproducible.
        pool_batches: batches per sorting pool; larger pools pad less but shuffle less.
        num_replicas, rank: data-parallel world size and this process's rank.
    """

    def __init__(
        self,
        lengths: Sequence[int] | Tensor,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        pool_batches: int = 50,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.int64)
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.pool_batches, self.num_replicas, self.rank = pool_batches, num_replicas, rank
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _all_batches(self) -> list[list[int]]:
        n = len(self.lengths)
        if not self.shuffle:
            # Stable sort: equal lengths keep index order, so evaluation order is fixed.
            order = torch.sort(self.lengths, stable=True).indices
            return [order[i : i + self.batch_size].tolist() for i in range(0, n, self.batch_size)]
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(n, generator=g)
        pool = self.batch_size * self.pool_batches
        batches: list[list[int]] = []
        for start in range(0, n, pool):
            chunk = perm[start : start + pool]
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices]
            batches += [
                chunk[i : i + self.batch_size].tolist()
                for i in range(0, len(chunk), self.batch_size)
            ]
        return [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._all_batches()
        if self.num_replicas > 1:
            total = math.ceil(len(batches) / self.num_replicas) * self.num_replicas
            batches = (batches * math.ceil(total / max(len(batches), 1)))[:total]
            batches = batches[self.rank :: self.num_replicas]
        return iter(batches)

    def __len__(self) -> int:
        n_batches = math.ceil(len(self.lengths) / self.batch_size)
        if not self.shuffle:
            return n_batches if self.num_replicas == 1 else math.ceil(n_batches / self.num_replicas)
        n_pools, rest = divmod(len(self.lengths), self.batch_size * self.pool_batches)
        n_batches = n_pools * self.pool_batches + math.ceil(rest / self.batch_size)
        return math.ceil(n_batches / self.num_replicas)


def train_val_split(n: int, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """A seeded random split of ``range(n)`` into (train, validation) index tensors."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_val = round(n * val_fraction)
    return perm[n_val:].sort().values, perm[:n_val].sort().values
