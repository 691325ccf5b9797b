import pytest
import torch

from fastlstm.data import BucketBatchSampler, ReviewDataset, collate, train_val_split


def _lengths(n, seed=0):
    return torch.randint(1, 300, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("n", "batch_size", "pool"),
    [
        pytest.param(1000, 32, 50, id="N1000-B32"),
        pytest.param(997, 64, 5, id="N997-B64-pool5"),
        pytest.param(10, 32, 50, id="N10-B32-one-batch"),
        pytest.param(131, 1, 3, id="N131-B1"),
    ],
)
def test_every_example_once_per_epoch(n, batch_size, pool):
    sampler = BucketBatchSampler(_lengths(n), batch_size, seed=3, pool_batches=pool)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(n))
        assert all(1 <= len(b) <= batch_size for b in batches)


def test_shuffled_between_epochs_and_reproducible():
    lengths = _lengths(2000)
    a = BucketBatchSampler(lengths, 32, seed=1)
    b = BucketBatchSampler(lengths, 32, seed=1)
    first = list(a)
    assert first == list(b)
    a.set_epoch(1)
    assert list(a) != first


def test_bucketing_pads_far_less_than_random_batches():
    lengths = _lengths(4000)

    def padding(batches):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in batches)

    bucketed = list(BucketBatchSampler(lengths, 32, seed=0))
    perm = torch.randperm(4000, generator=torch.Generator().manual_seed(0)).tolist()
    random_batches = [perm[i : i + 32] for i in range(0, 4000, 32)]
    assert padding(bucketed) < 0.1 * padding(random_batches)


def test_unshuffled_is_length_sorted():
    lengths = _lengths(100)
    flat = [i for b in BucketBatchSampler(lengths, 16, shuffle=False) for i in b]
    assert lengths[flat].tolist() == sorted(lengths.tolist())


@pytest.mark.parametrize("world", [2, 3], ids=["world2", "world3"])
def test_replicas_get_equal_batches_covering_everything(world):
    lengths = _lengths(1001)
    per_rank = []
    for rank in range(world):
        s = BucketBatchSampler(lengths, 32, seed=5, num_replicas=world, rank=rank)
        s.set_epoch(2)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
    assert len({len(b) for b in per_rank}) == 1
    covered = {i for batches in per_rank for b in batches for i in b}
    assert covered == set(range(1001))


def test_collate_pads_and_keeps_lengths():
    data = ReviewDataset([torch.tensor([5, 6, 7]), torch.tensor([8]), torch.tensor([])], [1, 0, 1])
    tokens, lengths, labels = collate([data[i] for i in range(3)])
    assert tokens.tolist() == [[5, 8, 0], [6, 0, 0], [7, 0, 0]]
    assert lengths.tolist() == [3, 1, 0]
    assert labels.tolist() == [1.0, 0.0, 1.0]


def test_train_val_split_is_seeded_and_disjoint():
    tr, va = train_val_split(1000, 0.1, seed=4)
    assert len(va) == 100 and len(tr) == 900
    assert sorted(tr.tolist() + va.tolist()) == list(range(1000))
    assert torch.equal(train_val_split(1000, 0.1, seed=4)[1], va)
    assert not torch.equal(train_val_split(1000, 0.1, seed=5)[1], va)
    with pytest.raises(ValueError, match="val_fraction"):
        train_val_split(10, 1.0)
