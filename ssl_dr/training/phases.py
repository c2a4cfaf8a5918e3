"""The two training phases of a run, each built entirely from config.

``pretext_weights`` returns backbone weights from the configured pretext (``cfg.pretext``), reused from
the store when an identical pretext already ran, trained otherwise. ``finetune`` trains the grader on the
run's split, picks the checkpoint with the best ``val/qwk`` and tests it on the held-out fold.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate
from lightning import Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.imports import _RICH_AVAILABLE
from omegaconf import DictConfig, OmegaConf

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.datamodule import FundusDataModule
from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.data.transforms import (
    AugmentConfig,
    ContrastiveAugment,
    ContrastiveViews,
    build_contrastive_transform,
    build_transform,
)
from ssl_dr.launch.folders import requeued_by_slurm
from ssl_dr.models.backbone import Backbone, load_backbone
from ssl_dr.models.metrics import grades_predicted
from ssl_dr.pretexts import build_pretext
from ssl_dr.pretexts.store import stored_or_trained
from ssl_dr.run_contract import LAST_CHECKPOINT, TEST_PREDICTIONS, VAL_PREDICTIONS, JobIdentity
from ssl_dr.training.budget import budget_record, freeze_steps
from ssl_dr.training.callbacks import RngStateCallback, StepBudgetProgressBar
from ssl_dr.training.loggers import build_loggers, close_loggers
from ssl_dr.training.predictions import PredictionWriter
from ssl_dr.training.screening import patients, screen
from ssl_dr.training.wandb_publish import Publish, finetune_publisher, pretext_publisher
from ssl_dr.training.wandb_run import VAL_STEP, define_finetune_metrics, publish_finetune_record, wandb_runs

log = logging.getLogger(__name__)



def _transforms(cfg: DictConfig, backbone: Backbone, train_kind: str) -> dict[str, Any]:
    """Train/eval transforms. ``train_kind``: ``finetune``, or the pretext's ``pretext.transform``:
    ``pretext`` (single images, evaluated resized only) or ``contrastive`` (pairs of views for training
    and evaluation alike, since the held-out SimCLR accuracy needs pairs too; those are fixed per image)."""
    mean, std = backbone.normalization()
    size = cfg.data.image_size
    if train_kind == "contrastive":
        views = ContrastiveAugment(**OmegaConf.to_container(cfg.pretext.augment, resolve=True))
        return {"train_transform": ContrastiveViews(build_contrastive_transform(size, mean, std, views, cfg.seed),
                                                    cfg.seed),
                "eval_transform": ContrastiveViews(build_contrastive_transform(size, mean, std, views, cfg.seed),
                                                   cfg.seed, fixed=True)}
    augment = AugmentConfig(**OmegaConf.to_container(cfg.data.augment, resolve=True))
    return {"train_transform": build_transform(train_kind, size, mean, std, augment, seed=cfg.seed),
            "eval_transform": build_transform("eval", size, mean, std, augment, seed=cfg.seed)}


def _fit(cfg: DictConfig, phase: str, run_id: str, run_name: str, module: Any, datamodule: FundusDataModule,
         callbacks: list[Callback], resume_from: Path | None, test: bool = False,
         run_record: dict[str, Any] | None = None, publish: Publish | None = None,
         screening: Callable[[], dict[str, Any]] | None = None, **trainer_overrides: Any) -> dict[str, Any]:
    """Fit from scratch or from ``resume_from`` (and optionally test the best checkpoint), with loggers
    that are closed whatever happens. ``run_id`` makes a resumed phase continue its W&B run. ``publish``
    gives the phase's W&B runs their pictures and artifacts once it has succeeded (on the process that writes
    them: rank 0); ``screening`` adds the figures read off the prediction files rank 0 wrote, before publishing."""
    loggers = build_loggers(cfg, phase, run_name, run_id)
    failed = True
    try:
        if test:
            define_finetune_metrics(loggers)
        trainer: Trainer = instantiate(cfg.trainer, logger=loggers, callbacks=[*callbacks, RngStateCallback()],
                                       **trainer_overrides)
        if resume_from is not None:
            log.info("resuming %s from %s", phase, resume_from)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        if not trainer.callback_metrics and not test:  # resumed from the final checkpoint: nothing left to run
            trainer.validate(module, datamodule=datamodule, verbose=False)  # (a tested phase validates below)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        if test:
            metrics.update(budget_record(trainer))
            best = trainer.checkpoint_callback
            metrics["val/qwk_best"] = float(best.best_model_score) if best and best.best_model_score is not None \
                else float("nan")
            chosen = "best" if best and best.best_model_path else None
            if chosen is None:  # fast_dev_run writes no checkpoint: there is no best, only the last weights
                log.info(f"{phase}: no checkpoint was written (trainer.fast_dev_run); testing the last weights")
            metrics.update(_validate_chosen(trainer, module, datamodule, chosen))
            # validate(ckpt_path=...) restores the weights, not the step count: the chosen pass ran at best/step
            metrics[VAL_STEP] = float(metrics.get("best/step", metrics.get(VAL_STEP, math.nan)))
            tested = trainer.test(module, datamodule=datamodule, ckpt_path=chosen)
            metrics.update({k: float(v) for k, v in tested[0].items()})
            metrics["test/confusion"] = module.confusion_matrices["test"]
            metrics["test/grades_predicted"] = grades_predicted(metrics["test/confusion"])
            if screening is not None and trainer.is_global_zero:
                metrics.update(screening())
            metrics["wandb/run_id"] = run_id  # the sweep's report run lists its jobs' runs by this id
            publish_finetune_record(loggers, {**(run_record or {}), **metrics})
        if publish is not None and trainer.is_global_zero and (runs := wandb_runs(loggers)):
            publish(trainer, runs)
        failed = False
        return metrics
    finally:
        close_loggers(loggers, failed)


def _validate_chosen(trainer: Trainer, module: Any, datamodule: FundusDataModule, chosen: str | None
                     ) -> dict[str, Any]:
    """Every ``val/*`` figure of the checkpoint that will be tested (its confusion matrix, per-grade and
    referable figures, QWK: equal to ``val/qwk_best``), from one more validation pass over it.

    The loggers are detached for that pass: it is a record of the chosen model, not a point of the training
    curves (logged at the last step, it would draw the best value there)."""
    loggers, trainer.loggers = trainer.loggers, []
    module.confusion_matrices.pop("val", None)  # only this pass's matrix may be reported
    try:
        validated = trainer.validate(module, datamodule=datamodule, ckpt_path=chosen, verbose=False)
    finally:
        trainer.loggers = loggers
    # no result where the validation slice has no batch (a tiny debug split): nothing to report, not a crash
    record: dict[str, Any] = {k: float(v) for k, v in (validated[0] if validated else {}).items()}
    if "val" in module.confusion_matrices:
        record["val/confusion"] = module.confusion_matrices["val"]
    return record


def _callbacks(cfg: DictConfig) -> list[Callback]:
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if cfg.trainer.get("enable_progress_bar", True) and _RICH_AVAILABLE:  # else Lightning's own choice
        callbacks.append(StepBudgetProgressBar())  # counts the fine-tune's steps of its budget
    if cfg.get("scale") is not None:  # channels_last / compile / grad checkpointing (ssl_dr.training.speed)
        callbacks.append(instantiate(cfg.scale))
    return callbacks


def pretext_weights(cfg: DictConfig, records: list[Record], cache: ImageCache, out_dir: Path
                    ) -> tuple[Path, dict[str, Any]]:
    """Weights of the configured pretext (``cfg.pretext``) over the pool (all images; labels never read): reused
    from the store (``ssl_dr.pretexts.store``) when an identical pretext ran, trained here otherwise."""
    pool = list(records)
    return stored_or_trained(cfg, pool, out_dir,
                             lambda key, partial: _train_pretext(cfg, pool, cache, out_dir, key, partial))


def _train_pretext(cfg: DictConfig, pool: list[Record], cache: ImageCache, out_dir: Path, key: str,
                   partial: Path) -> dict[str, Any]:
    """Train the pretext on a seeded 90/10 split of the pool; return its backbone and held-out metrics.

    Its checkpoints go to ``partial`` inside the content-addressed entry: a pretext killed midway is
    continued by whichever run needs the same key next (same key = same settings, so this is safe).
    """
    order = np.random.default_rng(cfg.data.split_seed).permutation(len(pool))
    n_val = max(1, round(cfg.pretext.val_fraction * len(pool)))
    val = [pool[i] for i in order[:n_val]]
    train = [pool[i] for i in order[n_val:]]
    backbone: Backbone = instantiate(cfg.model.backbone)
    module = build_pretext(cfg, backbone)
    datamodule = FundusDataModule(train, val, with_grades=False, batch_size=cfg.pretext.batch_size, seed=cfg.seed,
                                  num_workers=cfg.data.num_workers, cache=cache,
                                  **_transforms(cfg, backbone, cfg.pretext.transform))
    started = time.time()
    callbacks = [c for c in _callbacks(cfg) if not isinstance(c, ModelCheckpoint)]  # it monitors val/qwk
    callbacks.append(ModelCheckpoint(dirpath=partial, filename="last", save_top_k=1, every_n_epochs=1))
    last = partial / "last.ckpt"
    metrics = _fit(cfg, "pretext", f"pretext-{key}", f"pretext-{key[:8]}", module, datamodule, callbacks,
                   resume_from=last if last.is_file() else None,
                   publish=pretext_publisher(cfg, module, datamodule, key, partial), max_epochs=cfg.pretext.max_epochs,
                   max_steps=-1, val_check_interval=1.0, check_val_every_n_epoch=1,  # the fine-tune counts steps
                   default_root_dir=str(out_dir / "pretext"))
    return {"backbone": backbone, "pretext/val_acc": metrics.get("pretext/val_acc"),
            "pretext/val_loss": metrics.get("pretext/val_loss"), "pretext/train_acc": metrics.get("pretext/train_acc"),
            "pretext/seconds": round(time.time() - started, 1), "pretext/trained_in": str(out_dir)}


def finetune(cfg: DictConfig, train: list[Record], val: list[Record], test: list[Record], cache: ImageCache,
             init_weights: Path | None, out_dir: Path, run_record: dict[str, Any] | None = None) -> dict[str, Any]:
    """Grade with the backbone initialised from ``init_weights`` (or at random) and test the best
    checkpoint (chosen on ``val/qwk``) on the held-out fold, writing every test image's prediction to
    ``test_predictions.csv``. The budget is ``trainer.max_steps`` optimiser steps whatever the fraction
    (``ssl_dr.training.budget``); the encoder is frozen for the first steps only when it starts from learned weights.
    With ``resume`` set (or in a job SLURM requeued), continue from the run folder's ``checkpoints/last.ckpt``
    when there is one."""
    backbone: Backbone = instantiate(cfg.model.backbone)
    if init_weights is not None:
        load_backbone(backbone, init_weights)
    mean, std = backbone.normalization()
    inference = {"backbone": backbone.name, "image_size": cfg.data.image_size, "mean": list(mean), "std": list(std),
                 "preprocess": OmegaConf.to_container(cfg.data.preprocess, resolve=True),
                 "model_kwargs": dict(backbone.model_kwargs)}
    grade_counts = np.bincount([r.grade for r in train], minlength=NUM_GRADES).tolist()  # for grade_weights
    module = instantiate(cfg.model.classifier, backbone=backbone, inference=inference,
                         freeze_steps=freeze_steps(cfg), grade_counts=grade_counts)
    datamodule = FundusDataModule(train, val, test, with_grades=True, batch_size=cfg.data.batch_size, seed=cfg.seed,
                                  num_workers=cfg.data.num_workers, cache=cache,
                                  **_transforms(cfg, backbone, "finetune"))
    run_name = JobIdentity.from_config(cfg).run_name()
    last = out_dir / LAST_CHECKPOINT
    run_id = f"{cfg.arm}-{hashlib.sha256(str(out_dir.resolve()).encode()).hexdigest()[:12]}"
    callbacks = [*_callbacks(cfg), PredictionWriter(out_dir / TEST_PREDICTIONS),
                 PredictionWriter(out_dir / VAL_PREDICTIONS, stage="validate")]
    return _fit(cfg, "finetune", run_id, run_name, module, datamodule, callbacks,
                resume_from=last if (cfg.resume or requeued_by_slurm()) and last.is_file() else None, test=True,
                run_record=run_record, publish=finetune_publisher(cfg, module, datamodule, out_dir, run_record or {}),
                screening=lambda: screen(cfg.evaluation, out_dir, {"test": patients(test)}))

