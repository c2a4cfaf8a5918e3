"""One LightningDataModule for both phases: it gets record lists already split (see ``splits``) and
serves them through the right transforms. The pretext serves images only; the grader images + grades.

Loader workers (``data.num_workers``, default ``auto``) are resolved when Lightning asks for a loader, from
the trainer the module is attached to (``resolve_num_workers``): a GPU must be fed by several processes, the
CPU quick start is as fast with none.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.datasets import FundusDataset
from ssl_dr.data.records import Record
from ssl_dr.data.sampling import EpochShuffleSampler, ResumableLoader, loader_generator
from ssl_dr.errors import DataError

AUTO = "auto"
CPU_WORKERS = 0
"""``auto`` on the CPU. On 2 busy cores 0 and 2 workers tie and 1 is slower: median 5.85 / 4.67 / 5.85
images/s for 0 / 1 / 2 workers (DenseNet121, 64 px, batch 16, fine-tune augmentation from the cache; 8 rounds of
4-step blocks, the counts interleaved so the machine's changing load hits each alike). Loading is < 1 % of a
CPU step (one worker reads + augments ~2,000 images/s), so no count can win much; 0 keeps the quick start's
results as measured (workers draw other augmentations) without extra processes."""
GPU_WORKERS_CAP = 8
"""Most ``auto`` workers per GPU process. One worker reads + augments 2,031 images/s at 224 px from the cache
alone, 370 images/s inside a 2-worker DataLoader on 2 busy cores (benchmarks/loader.py on eyepacs-dev), so 8
should carry DESIGN's 5,000 images/s on free cores; unmeasured on a GPU machine (docs/real_data.md)."""
GPU_PREFETCH = 4
"""Batches each worker keeps ready on a GPU (PyTorch's default is 2): rides out a slow batch (a page-cache
miss) without the GPU waiting."""


def usable_cpus() -> int:
    """CPUs this process may run on (a container or ``taskset`` limit, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def resolve_num_workers(value: int | str, on_gpu: bool, processes: int, cpus: int | None = None) -> int:
    """``data.num_workers``: a count is kept; ``auto`` = ``CPU_WORKERS`` on the CPU, and on a GPU the CPUs per
    GPU process of this node minus one (that process feeds the GPU itself), at least 1, at most
    ``GPU_WORKERS_CAP``: 15 -> 8 on a 16-core one-GPU machine, 7 per rank for DDP on 2 GPUs of 16 cores."""
    if value == AUTO:
        if not on_gpu:
            return CPU_WORKERS
        cpus = usable_cpus() if cpus is None else cpus
        return max(1, min(GPU_WORKERS_CAP, cpus // max(1, processes) - 1))
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise DataError(f"data.num_workers={value!r} must be auto or a whole number >= 0 (0: load in the "
                        "training process)")
    return value


def loader_settings(num_workers: int | str, on_gpu: bool, processes: int, cpus: int | None = None) -> dict[str, Any]:
    """DataLoader keyword arguments for speed: workers, and on a GPU pinned memory (asynchronous copies to the
    device) and a deeper prefetch; workers persist across epochs (at 5 % of the labels an epoch is a few
    steps, and restarting workers every few steps would cost more than the steps)."""
    workers = resolve_num_workers(num_workers, on_gpu, processes, cpus)
    settings: dict[str, Any] = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": on_gpu}
    if workers > 0:
        settings["prefetch_factor"] = GPU_PREFETCH if on_gpu else 2
    return settings


class FundusDataModule(L.LightningDataModule):
    """Train/val(/test) loaders over record lists.

    The training order and augmentations come from ``seed`` alone (``ssl_dr.data.sampling``), and the training
    loader saves its position in the epoch in checkpoints: a resumed run trains on the same batches as an
    uninterrupted one."""

    def __init__(self, train: Sequence[Record], val: Sequence[Record], test: Sequence[Record] = (), *,
                 train_transform: Callable, eval_transform: Callable, with_grades: bool,
                 batch_size: int, seed: int, num_workers: int | str = 0, cache: ImageCache | None = None) -> None:
        super().__init__()
        if not train:
            raise ValueError("the training set is empty")
        self.datasets = {
            "train": FundusDataset(train, train_transform, with_grades, cache),
            "val": FundusDataset(val, eval_transform, with_grades, cache),
            "test": FundusDataset(test, eval_transform, with_grades, cache),
        }
        resolve_num_workers(num_workers, on_gpu=False, processes=1)  # a bad value fails here, before any fit
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers

    def loader_settings(self) -> dict[str, Any]:
        """``loader_settings`` for the device and processes per node of the attached trainer (none attached:
        CUDA if there is one, one process)."""
        if self.trainer is None:
            return loader_settings(self.num_workers, torch.cuda.is_available(), 1)
        return loader_settings(self.num_workers, self.trainer.strategy.root_device.type == "cuda",
                               self.trainer.num_devices)

    def _batches_done(self) -> int:
        """Batches of the current epoch the attached trainer has trained on (what a checkpoint must record)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.completed

    def train_dataloader(self) -> DataLoader:
        dataset = self.datasets["train"]
        replicas, rank = _replicas()
        sampler = EpochShuffleSampler(dataset, self.seed, num_replicas=replicas, rank=rank)
        loader = ResumableLoader(dataset, batch_size=self.batch_size, sampler=sampler,
                                 drop_last=len(sampler) > self.batch_size, generator=loader_generator(self.seed),
                                 **self.loader_settings())
        loader.batches_done = self._batches_done
        return loader

    def _evaluation_loader(self, stage: str) -> DataLoader:
        dataset = self.datasets[stage]
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, sampler=_evaluation_sampler(dataset),
                          generator=loader_generator(self.seed), **self.loader_settings())

    def val_dataloader(self) -> DataLoader:
        return self._evaluation_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._evaluation_loader("test")


def _replicas() -> tuple[int, int]:
    """(world size, rank) under DDP, else (1, 0)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


def _evaluation_sampler(dataset: FundusDataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP, shard val/test so that every image is scored exactly once.

    Lightning's default ``DistributedSampler`` pads the shards to equal length by repeating images, which
    would count those images twice in ``val/qwk`` and ``test/qwk``. This sampler gives rank r the images
    r, r + W, r + 2W, ... (shards may differ by one image); Lightning keeps a user-given
    ``DistributedSampler`` as it is. ``None`` (plain sequential order) outside DDP.
    """
    replicas, rank = _replicas()
    if replicas == 1:
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=replicas, rank=rank, shuffle=False)
