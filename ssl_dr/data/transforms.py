"""Albumentations pipelines, built from ``data.augment`` (and, for SimCLR, ``pretext.augment``) in config.

The ``pretext`` pipeline (rotation, jigsaw) never rotates or flips vertically, because for the rotation pretext the
rotation is the label (a horizontal flip only turns a left eye into an upright right eye), and it adds no
orientation the pretext could read after turning the batch (docs/camera_cues.md). The ``contrastive`` pipeline
(SimCLR) is the opposite: any rotation, both flips, and SimCLR's own strong colour jitter plus grayscale, because
with a mild jitter SimCLR matched views by each photograph's colour cast (docs/arms.md, docs/camera_cues.md).
``ContrastiveViews`` turns it into two views per image without touching the dataset.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
import numpy as np
import torch
from albumentations.pytorch import ToTensorV2

# values of ``pretext.transform``: single augmented images, or two views per image (SimCLR)
PRETEXT_TRANSFORMS = ("pretext", "contrastive")


@dataclass(frozen=True)
class AugmentConfig:
    """Strength of the training augmentations (``data.augment``)."""

    scale: tuple[float, float] = (0.85, 1.0)
    hflip: float = 0.5
    rotate: float = 15.0
    brightness: float = 0.2
    contrast: float = 0.2


def build_transform(kind: str, image_size: int, mean: Sequence[float], std: Sequence[float],
                    augment: AugmentConfig, seed: int) -> A.Compose:
    """``kind``: ``eval`` (resize only), ``pretext`` (no rotations) or ``finetune`` (small rotations).

    ``seed`` matters: albumentations 2 draws from its own generator, not numpy's global one, so without
    it two runs with the same ``cfg.seed`` would augment differently.
    """
    if kind not in ("eval", "pretext", "finetune"):
        raise ValueError(f"unknown transform kind {kind!r}")
    steps: list[A.BasicTransform]
    if kind == "eval":
        steps = [A.Resize(image_size, image_size)]
    else:
        steps = [
            A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(augment.scale), ratio=(0.95, 1.05)),
            A.HorizontalFlip(p=augment.hflip),
            A.RandomBrightnessContrast(brightness_limit=augment.brightness,
                                       contrast_limit=augment.contrast, p=0.8),
        ]
        if kind == "finetune" and augment.rotate > 0:
            steps.append(A.Affine(rotate=(-augment.rotate, augment.rotate), p=0.5))
    steps += [A.Normalize(mean=tuple(mean), std=tuple(std)), ToTensorV2()]
    return A.Compose(steps, seed=seed)


@dataclass(frozen=True)
class ContrastiveAugment:
    """Strength of the SimCLR view augmentations (``pretext.augment``)."""

    scale: tuple[float, float] = (0.4, 1.0)
    hflip: float = 0.5
    vflip: float = 0.5
    rotate: float = 180.0
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    color_p: float = 0.8
    grayscale: float = 0.2
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    blur_p: float = 0.3


def build_contrastive_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                                augment: ContrastiveAugment, seed: int) -> A.Compose:
    """One random view: rotate the whole fundus first (the black surround fills the corners), then crop,
    flip, jitter colour strongly (sometimes to grey) and blur lightly."""
    return A.Compose([
        A.Rotate(limit=(-augment.rotate, augment.rotate), p=1.0 if augment.rotate > 0 else 0.0),
        A.RandomResizedCrop(size=(image_size, image_size), scale=tuple(augment.scale), ratio=(0.9, 1.1)),
        A.HorizontalFlip(p=augment.hflip),
        A.VerticalFlip(p=augment.vflip),
        A.ColorJitter(brightness=augment.brightness, contrast=augment.contrast, saturation=augment.saturation,
                      hue=augment.hue, p=augment.color_p),
        A.ToGray(p=augment.grayscale),
        A.GaussianBlur(sigma_limit=tuple(augment.blur_sigma), p=augment.blur_p),
        A.Normalize(mean=tuple(mean), std=tuple(std)),
        ToTensorV2(),
    ], seed=seed)


class ContrastiveViews:
    """Two independent draws of ``transform`` on one image, stacked ``(2, C, H, W)``; a drop-in for an
    albumentations pipeline in ``FundusDataset`` (``t(image=...)["image"]``, ``set_random_seed``).

    ``fixed=True`` (held-out images): the views are seeded by the image's pixels, so every epoch, and a
    resumed run, measures the same pairs whatever the loader order.
    """

    def __init__(self, transform: A.Compose, seed: int, fixed: bool = False) -> None:
        self.transform = transform
        self.seed = seed
        self.fixed = fixed

    def set_random_seed(self, seed: int) -> None:
        self.transform.set_random_seed(seed)

    def __call__(self, *, image: np.ndarray) -> dict[str, torch.Tensor]:
        if self.fixed:
            self.transform.set_random_seed((self.seed + zlib.crc32(np.ascontiguousarray(image).data)) % 2**32)
        return {"image": torch.stack([self.transform(image=image)["image"] for _ in range(2)])}
