"""Albumentations pipelines, built from ``data.augment`` in config.

The pretext pipeline never rotates or flips vertically: the rotation *is* the label there, so any
extra rotation would corrupt it. Horizontal flips are safe (they turn a left eye into a right eye,
which stays upright).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import albumentations as A
from albumentations.pytorch import ToTensorV2


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
