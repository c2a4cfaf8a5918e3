"""What every pretext shares: the backbone, the optimiser from config, and the metrics it logs.

A pretext only adds a head (``self.head``, on the backbone's pooled features), how a batch of images
becomes the network's input, and its loss (``step``). Every pretext logs ``pretext/{train,val}_loss`` and
``pretext/{train,val}_acc``: the share of samples whose top-scoring candidate is the right one (the
applied rotation or permutation, or the positive view). ``phases`` and the pretext store read
``pretext/val_acc`` whichever pretext ran, so its meaning stays "held-out top-1 accuracy".
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import partial
from typing import Any, ClassVar, NamedTuple

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric

from ssl_dr.models.backbone import Backbone
from ssl_dr.models.optim import check_lr_scaling, configure_optimizers


class PretextStep(NamedTuple):
    """One batch's loss, and the scores/targets its top-1 accuracy is measured on."""

    loss: torch.Tensor
    scores: torch.Tensor  # (N, candidates): the network's scores for every candidate answer
    targets: torch.Tensor  # (N,): index of the right candidate
    inputs: torch.Tensor | None = None  # (N, C, H, W): what the network saw, one per row of ``scores`` (W&B grid)


class PretextExamples(NamedTuple):
    """What the W&B example grid shows of one batch (``PretextModule.examples``)."""

    tiles: torch.Tensor  # (N, C, H, W), normalised like the network's inputs; view-major: a row per view
    captions: list[str]  # one per tile
    right: list[bool]  # one per tile: drawn green (right) or red
    summary: str  # the grid's caption: what the tiles are, and the score


def mlp_head(in_features: int, hidden: int, out_features: int) -> nn.Sequential:
    """A small two-layer head: the point is to shape the shared backbone, which the grader reuses."""
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features))


class PretextModule(L.LightningModule, ABC):
    """Backbone + ``self.head`` (set by the subclass); the subclass implements ``step``.

    Accuracy is a ``MeanMetric`` over per-sample hits: for a classification pretext that is exactly
    micro-averaged accuracy, and it also covers retrieval (SimCLR), where the candidates change per batch.
    """

    head: nn.Module
    # the ``pretext.transform`` whose batches ``step`` expects: ``pretext`` (B, C, H, W) images, or
    # ``contrastive`` (B, 2, C, H, W) pairs of views
    TRANSFORM: ClassVar[str] = "pretext"

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None,
                 lr_scaling: str = "auto") -> None:
        super().__init__()
        check_lr_scaling(lr_scaling, "pretext.module.lr_scaling")
        # collects the subclass's own init arguments too (head size, temperature, ...)
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.lr_scaling = lr_scaling  # the rule for the learning rate under DDP (ssl_dr.models.optim.lr_scale)
        self.train_acc = MeanMetric()
        self.val_acc = MeanMetric()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    @abstractmethod
    def step(self, batch: torch.Tensor, batch_idx: int) -> PretextStep:
        """Build the pretext input from ``batch``, run the network, return loss, scores and targets."""

    def _shared_step(self, batch: torch.Tensor, batch_idx: int, stage: str, accuracy: MeanMetric) -> torch.Tensor:
        out = self.step(batch, batch_idx)
        accuracy((out.scores.argmax(dim=1) == out.targets).float())
        self.log(f"pretext/{stage}_loss", out.loss, prog_bar=True, on_step=stage == "train", on_epoch=True,
                 batch_size=out.scores.shape[0], sync_dist=True)  # epoch value averaged over DDP ranks
        self.log(f"pretext/{stage}_acc", accuracy, prog_bar=True, on_step=False, on_epoch=True)
        return out.loss

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self._shared_step(batch, batch_idx, "train", self.train_acc)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self._shared_step(batch, batch_idx, "val", self.val_acc)

    def examples(self, batch: torch.Tensor) -> PretextExamples:
        """The network's inputs for ``batch`` (as ``step`` builds them, batch index 0), each captioned
        ``right answer -> predicted``; the module must be in eval mode, under ``torch.no_grad``."""
        out = self.step(batch, 0)
        if out.inputs is None:
            raise TypeError(f"{type(self).__name__}.step must return its inputs (PretextStep.inputs), or override "
                            "examples(), for the W&B example grid")
        guesses, truths = out.scores.argmax(dim=1).tolist(), out.targets.tolist()
        right = [g == t for g, t in zip(guesses, truths, strict=True)]
        return PretextExamples(out.inputs, [f"{self.answer_name(t)} -> {self.answer_name(g)}"
                                            for t, g in zip(truths, guesses, strict=True)], right,
                               f"right answer -> predicted ({sum(right)}/{len(right)} right)")

    def answer_name(self, candidate: int) -> str:
        """A candidate answer as a picture's caption says it (the W&B example grid)."""
        return f"#{candidate}"

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory, lr_scaling=self.lr_scaling)
