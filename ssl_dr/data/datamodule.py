"""One LightningDataModule for both phases: it gets record lists already split (see ``splits``) and
serves them through the right transforms. The pretext serves images only; the grader images + grades.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import lightning as L
import torch
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
        return DataLoader(self.datasets[stage], batch_size=self.batch_size, shuffle=shuffle,
                          drop_last=shuffle and len(self.datasets[stage]) > self.batch_size,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          pin_memory=torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
