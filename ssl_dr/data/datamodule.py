"""One LightningDataModule for both phases: it gets record lists already split (see ``splits``) and
serves them through the right transforms. The pretext serves images only; the grader images + grades.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.datasets import FundusDataset
from ssl_dr.data.records import Record


class FundusDataModule(L.LightningDataModule):
    """Train/val(/test) loaders over record lists."""

    def __init__(self, train: Sequence[Record], val: Sequence[Record], test: Sequence[Record] = (), *,
                 train_transform: Callable, eval_transform: Callable, with_grades: bool,
                 batch_size: int, num_workers: int = 0, cache: ImageCache | None = None) -> None:
        super().__init__()
        if not train:
            raise ValueError("the training set is empty")
        self.datasets = {
            "train": FundusDataset(train, train_transform, with_grades, cache, random=True),
            "val": FundusDataset(val, eval_transform, with_grades, cache),
            "test": FundusDataset(test, eval_transform, with_grades, cache),
        }
        self.batch_size = batch_size
        self.num_workers = num_workers

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        dataset = self.datasets[stage]
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle,
                          sampler=None if shuffle else _evaluation_sampler(dataset),
                          drop_last=shuffle and len(dataset) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def _evaluation_sampler(dataset: FundusDataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP, shard val/test so that every image is scored exactly once.

    Lightning's default ``DistributedSampler`` pads the shards to equal length by repeating images, which
    would count those images twice in ``val/qwk`` and ``test/qwk``. This sampler gives rank r the images
    r, r + W, r + 2W, ... (shards may differ by one image); Lightning keeps a user-given
    ``DistributedSampler`` as it is. ``None`` (plain sequential order) outside DDP.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    return UnrepeatedDistributedSampler(dataset, num_replicas=torch.distributed.get_world_size(),
                                        rank=torch.distributed.get_rank(), shuffle=False)
