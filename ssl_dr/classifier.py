"""DRClassifier: the shared backbone plus a 5-grade head, scored by quadratic weighted kappa.

The encoder can be frozen for the first ``freeze_epochs`` (in ``eval`` mode, so BatchNorm statistics
learnt in pre-training are not overwritten by a randomly initialised head's first noisy gradients),
then everything trains end to end.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa

from ssl_dr.backbone import Backbone
from ssl_dr.data.records import NUM_GRADES
from ssl_dr.optim import configure_optimizers


class DRClassifier(L.LightningModule):
    """Grades 0-4 from a fundus image; logs ``{val,test}/{loss,acc,qwk}``."""

    def __init__(self, backbone: Backbone, optimizer: partial | None = None, scheduler: partial | None = None,
                 head_dropout: float = 0.2, freeze_epochs: int = 0, inference: dict[str, Any] | None = None) -> None:
        super().__init__()
        # `inference` (backbone name, image size, preprocessing, mean/std) travels in the checkpoint so
        # prediction and export rebuild the exact input pipeline without the user re-typing it.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, NUM_GRADES))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.freeze_epochs = freeze_epochs
        self.qwk = nn.ModuleDict({s: MulticlassCohenKappa(NUM_GRADES, weights="quadratic") for s in ("val", "test")})
        self.acc = nn.ModuleDict({s: MulticlassAccuracy(NUM_GRADES, average="micro") for s in ("val", "test")})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    @property
    def encoder_frozen(self) -> bool:
        """True during the warm-up epochs in which only the head learns."""
        return self.current_epoch < self.freeze_epochs

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Set every batch, both ways: Lightning restores each module's own mode after validation (a frozen
        # encoder would stay in eval mode forever) and sets train mode on a fit resumed from a checkpoint.
        self.backbone.requires_grad_(not self.encoder_frozen)
        self.backbone.train(not self.encoder_frozen)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, grades = batch
        loss = F.cross_entropy(self(images), grades)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(grades))
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Update the epoch metrics; return this batch's predicted grades and per-grade probabilities.

        The loss is averaged across DDP ranks (``sync_dist``); QWK and accuracy are torchmetrics, whose
        confusion-matrix states are summed over ranks, so they score the whole held-out set.
        """
        images, grades = batch
        logits = self(images)
        self.log(f"{stage}/loss", F.cross_entropy(logits, grades), on_epoch=True, batch_size=len(grades),
                 sync_dist=True)
        preds = logits.argmax(dim=1)
        self.qwk[stage](preds, grades)
        self.acc[stage](preds, grades)
        self.log(f"{stage}/qwk", self.qwk[stage], prog_bar=True, on_epoch=True)
        self.log(f"{stage}/acc", self.acc[stage], on_epoch=True)
        return {"preds": preds.detach(), "probs": logits.detach().float().softmax(dim=1)}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        # returned so ssl_dr.predictions.TestPredictionWriter can save every test image's prediction
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("DRClassifier was built without an optimizer (inference only)")
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory)
