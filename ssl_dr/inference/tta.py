"""Tensors for the network (the training ``eval`` transform) and test-time augmentation (flips, 90-degree
rotations), averaged on the head's activations."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    import albumentations as A

    from ssl_dr.models.classifier import DRClassifier

from ssl_dr.inference.checkpoint import InferenceSpec
from ssl_dr.inference.errors import InferenceError
from ssl_dr.inference.images import Decoded

TTA_MODES = ("none", "flip", "rot4", "flip_rot4")
_TTA_VIEWS = {"none": (False, 1), "flip": (True, 1), "rot4": (False, 4), "flip_rot4": (True, 4)}
"""mode -> (also horizontally flipped, number of 90-degree rotations)"""


def eval_transform(spec: InferenceSpec) -> A.Compose:
    """The training pipeline's ``eval`` transform (Resize to S, a no-op here; Normalize; to tensor)."""
    from ssl_dr.data.transforms import AugmentConfig, build_transform

    return build_transform("eval", spec.image_size, spec.mean, spec.std, AugmentConfig(), seed=0)


def tensor_batches(decoded: Decoded, transform: A.Compose, batch_size: int) -> Iterator[tuple[slice, torch.Tensor]]:
    """``(rows, images)`` batches in input order: ``images`` is ``(B, 3, S, S)`` float, normalised."""
    for start in range(0, len(decoded.records), batch_size):
        rows = slice(start, min(start + batch_size, len(decoded.records)))
        yield rows, torch.stack([transform(image=np.asarray(p))["image"] for p in decoded.pixels[rows]])


def tta_views(images: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The views averaged by ``mode``: identity, + horizontal flip, and/or the four 90-degree rotations.

    Flips and rotations commute with the per-channel normalisation, so they act on the normalised tensor.
    """
    if mode not in _TTA_VIEWS:
        raise InferenceError(f"tta={mode!r} must be one of {', '.join(TTA_MODES)}")
    flip, rotations = _TTA_VIEWS[mode]
    bases = [images, images.flip(-1)] if flip else [images]
    return [torch.rot90(base, k, dims=(-2, -1)) for base in bases for k in range(rotations)]


@torch.inference_mode()
def predict_activated(model: DRClassifier, images: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """The head's activation averaged over the TTA views, decoded afterwards (``model.grading``): grade
    probabilities ``(B, 5)`` for classification, threshold sigmoids ``(B, 4)`` for ordinal, the score
    ``(B,)`` for regression. Averaging probabilities (not logits or grades) keeps the decoding rule of a
    single pass; averaging the score lets the tuned thresholds cut the mean."""
    views = tta_views(images, tta)
    return torch.stack([model.grading.activate(model(v)) for v in views]).mean(dim=0)
