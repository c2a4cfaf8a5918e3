"""RotationPretext: predict which of 0/90/180/270 degrees an image was rotated by (RotNet).

Every image appears in all four rotations within the same batch, which balances the labels exactly and
lets the network compare the four views of one image. The head is small on purpose: the point is to
shape the shared backbone, whose weights are what the grader later reuses.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy

from ssl_dr.backbone import Backbone
from ssl_dr.optim import configure_optimizers

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


class RotationPretext(L.LightningModule):
    """Backbone + a small MLP head trained with 4-way cross-entropy on rotated copies."""

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None,
                 head_hidden: int = 256) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Linear(backbone.num_features, head_hidden), nn.ReLU(inplace=True),
                                  nn.Linear(head_hidden, NUM_ROTATIONS))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.train_acc = MulticlassAccuracy(num_classes=NUM_ROTATIONS, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes=NUM_ROTATIONS, average="micro")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def _step(self, images: torch.Tensor, stage: str, accuracy: MulticlassAccuracy) -> torch.Tensor:
        rotated, labels = rotate_batch(images)
        logits = self(rotated)
        loss = F.cross_entropy(logits, labels)
        accuracy(logits, labels)
        self.log(f"pretext/{stage}_loss", loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=rotated.shape[0])
        self.log(f"pretext/{stage}_acc", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return loss

    def training_step(self, images: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._step(images, "train", self.train_acc)

    def validation_step(self, images: torch.Tensor, batch_idx: int) -> None:
        self._step(images, "val", self.val_acc)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)

