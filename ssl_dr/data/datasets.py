"""Torch datasets over records: pixels from the cache (or ``ssl_dr.data.decode``), augmented."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Dataset

from ssl_dr.data.decode import read_rgb
from ssl_dr.data.records import Record

if TYPE_CHECKING:
    from ssl_dr.data.cache import ImageCache


class FundusDataset(Dataset):
    """Images (and grades, when ``with_grades``) of a record list, transformed for the network.

    With a ``cache`` the pixels come from the preprocessed memory-mapped array (cropped, resized once);
    without one, every access decodes the original file (slow for full-size photographs).
    """

    def __init__(self, records: Sequence[Record], transform: Callable, with_grades: bool = True,
                 cache: ImageCache | None = None) -> None:
        if with_grades and any(r.grade is None for r in records):
            raise ValueError("a graded dataset was given unlabelled records")
        self.records = list(records)
        self.transform = transform
        self.with_grades = with_grades
        self.cache = cache

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int | tuple[int, int]) -> torch.Tensor | tuple[torch.Tensor, int]:
        """``index``, or ``(index, augmentation seed)`` from ``EpochShuffleSampler``: the seed makes the sample's
        augmentation a function of its place in training alone (reproducible, and exact after a resume)."""
        if isinstance(index, tuple):
            index, seed = index
            self.transform.set_random_seed(seed)
        rec = self.records[index]
        pixels = self.cache.image(rec.id_code) if self.cache is not None else read_rgb(rec.path)
        image = self.transform(image=pixels)["image"]
        return (image, rec.grade) if self.with_grades else image
