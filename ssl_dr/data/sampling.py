"""Training order and augmentation draws that are a pure function of (seed, epoch, position), so a run
killed at any step and resumed from its checkpoint trains on exactly the batches, and the augmentations, of
an uninterrupted run.

The permutation of epoch ``e`` is ``default_rng([seed, e])``; the sampler yields ``(index, seed)`` pairs whose
augmentation seed derives from ``(seed, e, position)``, and ``FundusDataset`` applies them; ``ResumableLoader``
saves how many batches of the epoch were trained (Lightning's ``state_dict`` / ``load_state_dict``), so a resumed
epoch skips exactly those; every loader has its own generator, so none draws from the global one that dropout
uses. Why torch's ``RandomSampler`` was not enough: docs/architecture.md, "Design notes".
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler


def augmentation_seed(seed: int, epoch: int, position: int) -> int:
    """The seed of one sample's augmentation: distinct for every (seed, epoch, position), independent of how
    many samples were drawn before it (a resumed run recomputes it from the three numbers alone)."""
    return int(np.random.SeedSequence([seed, epoch, position]).generate_state(1)[0])


class EpochShuffleSampler(DistributedSampler):
    """Shuffles every epoch with ``default_rng([seed, epoch])`` and yields ``(index, augmentation seed)``.

    A ``DistributedSampler`` so that Lightning keeps it under DDP instead of wrapping it: rank ``r`` of ``W``
    takes positions ``r, r + W, ...`` of the epoch's permutation (the tail that does not divide by ``W`` is
    dropped, so every rank gets as many samples). ``resume_at`` skips the first samples of one epoch, once.
    """

    def __init__(self, dataset: Sized, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self._resume: tuple[int, int] | None = None  # (epoch, samples of it already trained on by this rank)

    def resume_at(self, epoch: int, samples_done: int) -> None:
        """Continue ``epoch`` after its first ``samples_done`` samples (of this rank)."""
        self.set_epoch(epoch)
        self._resume = (epoch, samples_done)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        usable = len(order) - len(order) % self.num_replicas
        positions = range(self.rank, usable, self.num_replicas)
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
            self._resume = None
        for position in positions[start:]:
            yield int(order[position]), augmentation_seed(self.seed, self.epoch, position)


class ResumableLoader(DataLoader):
    """A training DataLoader that Lightning can checkpoint mid-epoch (its ``_Stateful`` protocol).

    ``batches_done`` (set by the data module) reads how many batches of the current epoch the trainer has
    *trained on*: not how many this loader handed out, which is one more whenever Lightning has fetched the
    next batch ahead. Lightning re-creates a loader in debug modes (``overfit_batches``) without this
    attribute; such a loader then saves no position (and its epochs restart), as before.
    """

    batches_done: Callable[[], int] | None = None

    def state_dict(self) -> dict[str, Any]:
        sampler = self.sampler
        epoch = sampler.epoch if isinstance(sampler, EpochShuffleSampler) else 0
        return {"epoch": epoch, "batches_done": self.batches_done() if self.batches_done is not None else 0}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if isinstance(self.sampler, EpochShuffleSampler):
            self.sampler.resume_at(int(state_dict["epoch"]), int(state_dict["batches_done"]) * self.batch_size)


def loader_generator(seed: int) -> torch.Generator:
    """A generator of the loader's own: the base seed every new iterator draws comes from it, not from the
    global generator (whose state the checkpoint carries for dropout)."""
    return torch.Generator().manual_seed(seed)
