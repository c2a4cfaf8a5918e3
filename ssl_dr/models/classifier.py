"""DRClassifier: the shared backbone plus a grade head (``model.head``), scored by quadratic weighted kappa.

A learned encoder is frozen, in ``eval`` mode, for the first ``freeze_steps`` optimiser steps, so a random head's
first noisy gradients do not overwrite its pre-trained BatchNorm statistics; a random encoder never is (freezing it
only fits a head on noise). Budget and schedule count optimiser steps, so every arm and label fraction gets the
same number of updates. The linear layer stays ``self.head`` (older checkpoints still load); the head's loss and
decoding live in ``self.grading``. Regression cut points are tuned on every validation epoch's gathered predictions
and kept in a buffer, so the checkpoint chosen on ``val/qwk`` carries its own thresholds and the test fold never
shapes one. ``grade_weights`` weighs the training loss by grade; ``val/loss`` stays the plain mean. The reasons
and numbers: docs/protocol.md (freezing, "Budget") and docs/arms.md ("Grade heads").
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa, MulticlassConfusionMatrix

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.models.backbone import Backbone
from ssl_dr.models.gather import gather_from_ranks
from ssl_dr.models.heads import DEFAULT_THRESHOLDS, RegressionHead, build_head, cut, grade_weights_for, tune_thresholds
from ssl_dr.models.metrics import KaggleKappa, ReferableAUROC, confusion_summary, grades_predicted
from ssl_dr.models.optim import check_lr_scaling, configure_optimizers

log = logging.getLogger(__name__)


class DRClassifier(L.LightningModule):
    """Grades 0-4 from a fundus image; logs ``{val,test}/{loss,acc,qwk,qwk_kaggle,auroc_referable}`` (and, for the
    regression head, ``val/qwk_rounded``: QWK with the untuned cut points 0.5, 1.5, 2.5, 3.5)."""

    def __init__(self, backbone: Backbone, optimizer: partial | None = None, scheduler: partial | None = None,
                 head_dropout: float = 0.2, freeze_steps: int = 0, inference: dict[str, Any] | None = None,
                 head: str = "classification", lr_scaling: str = "auto", grade_weights: str = "none",
                 grade_counts: list[int] | None = None, layer_decay: float | None = None) -> None:
        super().__init__()
        check_lr_scaling(lr_scaling, "model.classifier.lr_scaling")
        # `inference` (backbone name, image size, preprocessing, mean/std) and `head` travel in the checkpoint
        # so prediction and export rebuild the exact pipeline and decoding without the user re-typing them.
        self.save_hyperparameters(ignore=["backbone", "optimizer", "scheduler"])
        self.backbone = backbone
        self.grading = build_head(head)
        # training-loss weights per grade (None: the plain mean); not persistent, so checkpoints written before
        # the weighting existed load, and inference never needs the training split's counts
        self.register_buffer("loss_weights", grade_weights_for(grade_weights, grade_counts), persistent=False)
        self.head = nn.Sequential(nn.Dropout(head_dropout), nn.Linear(backbone.num_features, self.grading.num_outputs))
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.freeze_steps = freeze_steps
        self.lr_scaling = lr_scaling  # the rule for the learning rate under DDP (ssl_dr.models.optim.lr_scale)
        self.layer_decay = layer_decay  # per-depth learning rates (ssl_dr.models.optim.layer_decay_groups)
        self.qwk = nn.ModuleDict({s: MulticlassCohenKappa(NUM_GRADES, weights="quadratic") for s in ("val", "test")})
        self.acc = nn.ModuleDict({s: MulticlassAccuracy(NUM_GRADES, average="micro") for s in ("val", "test")})
        self.qwk_kaggle = nn.ModuleDict({s: KaggleKappa() for s in ("val", "test")})
        self.auroc_referable = nn.ModuleDict({s: ReferableAUROC() for s in ("val", "test")})
        self.confusion = nn.ModuleDict({s: MulticlassConfusionMatrix(NUM_GRADES) for s in ("val", "test")})
        self.confusion_matrices: dict[str, list[list[int]]] = {}
        """The last computed 5x5 matrix per stage (rows true, columns predicted), for metrics.json and W&B."""
        if self.tunes_thresholds:
            self.qwk_rounded = MulticlassCohenKappa(NUM_GRADES, weights="quadratic")
        self._val_scores: list[torch.Tensor] = []
        self._val_grades: list[torch.Tensor] = []
        self._said_collapsed = False

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Raw head outputs ``(B, grading.num_outputs)``: logits, threshold logits or the score."""
        return self.head(self.backbone(images))

    @property
    def tunes_thresholds(self) -> bool:
        return isinstance(self.grading, RegressionHead)

    @property
    def encoder_frozen(self) -> bool:
        """True during the first ``freeze_steps`` optimiser steps, in which only the head learns."""
        return self.global_step < self.freeze_steps

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # Set every batch, both ways: Lightning restores each module's own mode after validation (a frozen
        # encoder would stay in eval mode forever) and sets train mode on a fit resumed from a checkpoint.
        self.backbone.requires_grad_(not self.encoder_frozen)
        self.backbone.train(not self.encoder_frozen)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        images, grades = batch
        loss = self.grading.loss(self(images), grades, self.loss_weights)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(grades),
                 sync_dist=True)  # the epoch value averages all DDP ranks (the step value stays per rank)
        return loss

    def _evaluate(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> dict[str, torch.Tensor]:
        """Update the epoch metrics; return this batch's predictions (see ``_prediction``).

        The loss is averaged across DDP ranks (``sync_dist``); QWK and accuracy are torchmetrics, whose
        confusion-matrix states are summed over ranks, and ``qwk_kaggle`` concatenates every rank's samples,
        so all of them score the whole held-out set. Regression validation is scored at the epoch's end,
        once the thresholds have been tuned on it.
        """
        images, grades = batch
        outputs = self(images)
        self.log(f"{stage}/loss", self.grading.loss(outputs, grades), on_epoch=True, batch_size=len(grades),
                 sync_dist=True)
        activated = self.grading.activate(outputs.detach())
        if stage == "val" and self.tunes_thresholds:
            self._val_scores.append(activated)
            self._val_grades.append(grades)
            self.qwk_rounded(cut(activated, torch.tensor(DEFAULT_THRESHOLDS)), grades)
            self.log("val/qwk_rounded", self.qwk_rounded, on_epoch=True)
        else:
            self._score(stage, activated, grades)
        return self._prediction(activated)

    def _score(self, stage: str, activated: torch.Tensor, grades: torch.Tensor) -> None:
        preds = self.grading.decode(activated)
        self.qwk[stage](preds, grades)
        self.acc[stage](preds, grades)
        self.qwk_kaggle[stage](self.grading.cumulative(activated), grades)
        self.log(f"{stage}/qwk", self.qwk[stage], prog_bar=True, on_epoch=True)
        self.log(f"{stage}/acc", self.acc[stage], on_epoch=True)
        self.log(f"{stage}/qwk_kaggle", self.qwk_kaggle[stage], on_epoch=True)
        self.auroc_referable[stage](self.grading.referable(activated), grades)
        self.log(f"{stage}/auroc_referable", self.auroc_referable[stage], on_epoch=True)
        self.confusion[stage](preds, grades)

    def _log_confusion(self, stage: str) -> None:
        """Close the stage's confusion matrix: keep it, and log the per-grade and referable figures read off
        it (``metrics.confusion_summary``; NaN where a figure has no denominator)."""
        matrix = self.confusion[stage].compute()  # summed over DDP ranks: the same on every rank
        self.confusion[stage].reset()
        self.confusion_matrices[stage] = matrix.long().tolist()
        if stage == "val" and grades_predicted(matrix.cpu()) == 1 and not self._said_collapsed \
                and not self.trainer.sanity_checking:
            self._said_collapsed = True  # once per run, in words: not a library warning per validation
            log.info(f"validation at step {self.global_step}: every image graded {int(matrix.sum(dim=0).argmax())} "
                     "(the grader sits on one grade; its QWK is 0 or undefined); said once, later validations may "
                     "do the same")
        for name, value in confusion_summary(matrix).items():
            self.log(f"{stage}/{name}", torch.tensor(value), sync_dist=True)  # equal on every rank already

    def _prediction(self, activated: torch.Tensor) -> dict[str, torch.Tensor]:
        """``preds`` (B,) decoded grades; ``referable`` (B,) the head's referable score (what the operating point
        thresholds); ``probs`` (B, 5) where the head has grade probabilities; ``score`` (B,) where it has a
        continuous output (regression)."""
        out = {"preds": self.grading.decode(activated), "referable": self.grading.referable(activated)}
        probs, score = self.grading.probs(activated), self.grading.score(activated)
        if probs is not None:
            out["probs"] = probs
        if score is not None:
            out["score"] = score
        return out

    def on_validation_epoch_start(self) -> None:
        self._val_scores.clear()
        self._val_grades.clear()

    def on_validation_epoch_end(self) -> None:
        """Regression: tune the thresholds on this epoch's validation predictions (all ranks), then score it.
        Every head: log the epoch's per-grade and referable figures."""
        if self.tunes_thresholds and self._val_scores:
            self._score_regression_validation()
        self._log_confusion("val")
        # the steps done, for W&B's x-axis (wandb_run.VAL_STEP): Lightning logs this validation one step earlier
        self.log("val/step", float(self.global_step), sync_dist=True)

    def on_test_epoch_end(self) -> None:
        self._log_confusion("test")

    def _score_regression_validation(self) -> None:
        scores, grades = torch.cat(self._val_scores), torch.cat(self._val_grades)
        all_scores = np.concatenate(gather_from_ranks(scores.cpu().numpy()))
        all_grades = np.concatenate(gather_from_ranks(grades.cpu().numpy()))
        tuned = tune_thresholds(all_scores, all_grades)
        self.grading.thresholds.copy_(torch.as_tensor(tuned, dtype=self.grading.thresholds.dtype))
        self._score("val", scores, grades)  # this rank's samples; the metrics sum the ranks
        self._val_scores.clear()
        self._val_grades.clear()

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        # returned so ssl_dr.training.predictions.PredictionWriter can save the chosen checkpoint's validation
        return self._evaluate(batch, "val")

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        # returned so ssl_dr.training.predictions.PredictionWriter can save every test image's prediction
        return self._evaluate(batch, "test")

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("DRClassifier was built without an optimizer (inference only)")
        return configure_optimizers(self, self.optimizer_factory, self.scheduler_factory, interval="step",
                                    lr_scaling=self.lr_scaling, layer_decay=self.layer_decay)

