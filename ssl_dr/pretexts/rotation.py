"""RotationPretext: predict which of 0/90/180/270 degrees an image was rotated by (RotNet).

Every image appears in all four rotations within the same batch, which balances the labels exactly and
lets the network compare the four views of one image.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts.base import PretextModule, PretextStep, mlp_head

NUM_ROTATIONS = 4


def rotate_batch(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, C, H, W)`` -> ``(4B, C, H, W)`` rotated by k*90 degrees counter-clockwise, labels k.

    Block k of the output holds every image rotated by k quarter turns (``torch.rot90`` over H, W).
    """
    if images.shape[-1] != images.shape[-2]:
        raise ValueError(f"rotation pretext needs square images, got {tuple(images.shape[-2:])}")
    rotated = torch.cat([torch.rot90(images, k, dims=(-2, -1)) for k in range(NUM_ROTATIONS)])
    labels = torch.arange(NUM_ROTATIONS, device=images.device).repeat_interleave(images.shape[0])
    return rotated, labels


class RotationPretext(PretextModule):
    """Backbone + a small MLP head trained with 4-way cross-entropy on rotated copies."""

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None,
                 head_hidden: int = 256, lr_scaling: str = "auto") -> None:
        super().__init__(backbone, optimizer, scheduler, lr_scaling)
        self.head = mlp_head(backbone.num_features, head_hidden, NUM_ROTATIONS)

    def step(self, batch: torch.Tensor, batch_idx: int) -> PretextStep:
        rotated, labels = rotate_batch(batch)
        logits = self(rotated)
        return PretextStep(F.cross_entropy(logits, labels), logits, labels, rotated)

    def answer_name(self, candidate: int) -> str:
        return f"{90 * candidate} deg"
