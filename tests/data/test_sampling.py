"""The training order and augmentation draws are a function of (seed, epoch, position) alone, and the training
loader resumes an epoch where a checkpoint left it (``ssl_dr.data.sampling``)."""

from __future__ import annotations

import pytest

from ssl_dr.data.sampling import EpochShuffleSampler, ResumableLoader, augmentation_seed, loader_generator


class Indexed(list):
    """A dataset that returns the index the sampler gave it (``(index, augmentation seed)`` -> index)."""

    def __getitem__(self, item):
        return item[0]


def _order(sampler: EpochShuffleSampler, epoch: int) -> list[tuple[int, int]]:
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_seeded_permutation_of_the_dataset():
    data = list(range(50))
    sampler = EpochShuffleSampler(data, seed=3)
    epoch0, epoch1 = _order(sampler, 0), _order(sampler, 1)
    assert sorted(i for i, _ in epoch0) == data and sorted(i for i, _ in epoch1) == data
    assert epoch0 != epoch1  # a new order every epoch
    assert _order(EpochShuffleSampler(data, seed=3), 1) == epoch1  # the same from a fresh sampler
    assert _order(EpochShuffleSampler(data, seed=4), 1) != epoch1
    seeds = [s for _, s in epoch0 + epoch1]
    assert len(set(seeds)) == len(seeds)  # every sample of every epoch augmented with its own draw


def test_augmentation_seed_depends_on_its_three_numbers_only():
    assert augmentation_seed(1, 2, 3) == augmentation_seed(1, 2, 3)
    assert len({augmentation_seed(1, 2, 3), augmentation_seed(1, 3, 2), augmentation_seed(2, 1, 3)}) == 3


def test_resume_at_skips_the_trained_samples_of_that_epoch_once():
    sampler = EpochShuffleSampler(list(range(20)), seed=0)
    full = _order(sampler, 5)
    sampler.resume_at(5, 8)
    assert list(sampler) == full[8:]
    assert list(sampler) == full  # the next pass over the same epoch is whole again
    sampler.resume_at(5, 20)  # checkpoint on the epoch's last batch: nothing left of it
    assert list(sampler) == []
    assert _order(sampler, 6) == _order(EpochShuffleSampler(list(range(20)), seed=0), 6)  # the skip was epoch 5's


def test_ranks_share_one_permutation_without_overlap():
    data = list(range(23))
    shards = [list(EpochShuffleSampler(data, seed=1, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(s) for s in shards] == [7, 7, 7] == [len(EpochShuffleSampler(data, 1, 3, r)) for r in range(3)]
    indices = [i for shard in shards for i, _ in shard]
    assert len(set(indices)) == 21  # disjoint; the 2 left over are dropped so every rank steps alike
    single = [i for i, _ in EpochShuffleSampler(data, seed=1)]
    assert [i for i, _ in shards[1]] == single[1:21:3]


def test_loader_state_is_the_trained_batches_not_the_fetched_ones():
    data = Indexed(range(40))
    loader = ResumableLoader(data, batch_size=4, sampler=EpochShuffleSampler(data, seed=2), drop_last=True,
                             generator=loader_generator(2))
    loader.sampler.set_epoch(3)
    full = [batch for batch in loader]
    loader.batches_done = lambda: 3  # what the trainer has trained on, whatever the loader prefetched
    state = loader.state_dict()
    assert state == {"epoch": 3, "batches_done": 3}
    fresh = ResumableLoader(data, batch_size=4, sampler=EpochShuffleSampler(data, seed=2), drop_last=True)
    fresh.load_state_dict(state)
    assert [b.tolist() for b in fresh] == [b.tolist() for b in full[3:]]


def test_making_loaders_draws_nothing_from_the_global_generator():
    import torch

    data = Indexed(range(8))
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    for _ in range(3):  # a validation pass makes a new iterator each time
        loader = ResumableLoader(data, batch_size=4, sampler=EpochShuffleSampler(data, seed=0),
                                 generator=loader_generator(0))
        next(iter(loader))
    assert torch.rand(1) == pytest.approx(expected.item(), abs=0)
