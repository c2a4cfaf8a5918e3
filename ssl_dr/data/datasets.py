"""Torch datasets over records: decode, convert to RGB, augment."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from ssl_dr.data.records import DataError, Record

if TYPE_CHECKING:
    from ssl_dr.data.cache import ImageCache


def read_rgb(path: Path) -> np.ndarray:
    """Decode any common fundus file (greyscale, RGBA, 16-bit, CMYK, EXIF-rotated) as uint8 RGB."""
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32)
                scale = 255.0 / max(float(arr.max()), 1.0)
                img = Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8))
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace or remove the file") from err


class FundusDataset(Dataset):
    """Images (and grades, when ``with_grades``) of a record list, transformed for the network.

    With a ``cache`` the pixels come from the preprocessed memory-mapped array (cropped, resized once);
    without one, every access decodes the original file (slow for full-size photographs).
    """

    def __init__(self, records: Sequence[Record], transform: Callable, with_grades: bool = True,
                 cache: ImageCache | None = None, random: bool = False) -> None:
        if with_grades and any(r.grade is None for r in records):
            raise ValueError("a graded dataset was given unlabelled records")
        self.records = list(records)
        self.transform = transform
        self.with_grades = with_grades
        self.cache = cache
        self.random = random

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, int]:
        rec = self.records[index]
        pixels = self.cache.image(rec.id_code) if self.cache is not None else read_rgb(rec.path)
        if self.random:  # augmentation randomness drawn from torch's generator: reproducible and resumable
            self.transform.set_random_seed(int(torch.randint(2**31 - 1, ()).item()))
        image = self.transform(image=pixels)["image"]
        return (image, rec.grade) if self.with_grades else image
