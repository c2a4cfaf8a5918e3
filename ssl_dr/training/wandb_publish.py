"""What each phase hands its W&B run once it has finished: pictures (``cfg.media``, ``ssl_dr.training.wandb_media``),
the fine-tune's referable ROC/PR curves and per-grade table, and, with ``wandb_artifacts=true``, weights and lineage
(``ssl_dr.training.wandb_artifacts``).

A publisher is built before the fit (so it closes over the phase's module and data) and called by
``phases._fit`` after the phase has succeeded, on rank 0 only, with the phase's W&B runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning import Trainer
from omegaconf import DictConfig, OmegaConf

from ssl_dr.data.datamodule import FundusDataModule
from ssl_dr.models.backbone import save_backbone
from ssl_dr.pretexts.store import WEIGHTS_NAME
from ssl_dr.run_contract import RELIABILITY_PLOT, TEST_PREDICTIONS, JobIdentity
from ssl_dr.training.curves import stage_curves
from ssl_dr.training.wandb_artifacts import (
    link_pretext,
    log_grader_artifact,
    log_pretext_artifact,
    pretext_artifact_name,
)
from ssl_dr.training.wandb_media import MediaConfig, curve_charts, per_grade_table, predictions_table, pretext_grid
from ssl_dr.training.wandb_run import json_safe

log = logging.getLogger(__name__)

Publish = Callable[[Trainer, list[Any]], None]
"""``publish(trainer, wandb_runs)``: called once, after the phase succeeded."""

GRAD_CAM_NOTE = "media/grad_cam"
"""Summary key saying why the predictions table has no Grad-CAM (a feature map too coarse), where it has none."""
ARTIFACT_DIR = "artifact"
"""Folder (inside the pretext's partial entry, removed with it) for the backbone file a pretext artifact holds."""


def media_config(cfg: DictConfig) -> MediaConfig:
    """``cfg.media`` (absent: the defaults), checked."""
    return MediaConfig(**OmegaConf.to_container(cfg.get("media") or OmegaConf.create(), resolve=True))


def pretext_publisher(cfg: DictConfig, module: Any, datamodule: FundusDataModule, key: str, partial: Path) -> Publish:
    """The grid of held-out images as the pretext saw them, with its answers; its backbone as an artifact."""
    media = media_config(cfg)

    def publish(trainer: Trainer, runs: list[Any]) -> None:
        import wandb

        logged: dict[str, Any] = {}
        if media.pretext_grid and len(datamodule.datasets["val"]):
            grid, text = pretext_grid(module, datamodule.datasets["val"], media.pretext_grid,
                                      *module.backbone.normalization())
            logged["pretext/examples"] = wandb.Image(grid, caption=text)
        artifacts = bool(cfg.get("wandb_artifacts", False))
        meta = {"pretext": cfg.pretext.name, "pretext/key": key,
                **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        weights = partial / ARTIFACT_DIR / WEIGHTS_NAME
        if artifacts:  # the same payload as the store's file (loads with load_backbone)
            save_backbone(module.backbone, weights, meta=meta)
        for run in runs:
            if logged:
                run.log(logged)
            if artifacts:
                log_pretext_artifact(run, weights, cfg.pretext.name, key, json_safe(meta))
    return publish


def finetune_publisher(cfg: DictConfig, module: Any, datamodule: FundusDataModule, out_dir: Path,
                       run_record: dict[str, Any]) -> Publish:
    """The tested checkpoint's predictions table, referable ROC/PR curves and per-grade table; that checkpoint as an
    artifact, with its pretext as input."""
    media = media_config(cfg)
    key = run_record.get("pretext/key")

    def publish(trainer: Trainer, runs: list[Any]) -> None:
        logged: dict[str, Any] = {}
        notes: dict[str, str] = {}
        if media.predictions and (out_dir / TEST_PREDICTIONS).is_file():
            logged["test/predictions"], note = predictions_table(module, datamodule.datasets["test"],
                                                                 out_dir / TEST_PREDICTIONS, media.predictions,
                                                                 media.grad_cam)
            if note:  # said once, in the log and on the run page
                log.info(note)
                notes[GRAD_CAM_NOTE] = note
        if (curves := stage_curves(out_dir, "test")) is not None:  # none on a one-sided fold (curves.py says so)
            logged.update(curve_charts(curves, "test"))
        if module.confusion_matrices.get("test"):
            logged["test/per_grade"] = per_grade_table(module.confusion_matrices["test"])
        reliability = out_dir / RELIABILITY_PLOT.format(stage="test")
        if reliability.is_file():  # ssl_dr.training.screening's diagram of the tested checkpoint
            import wandb

            logged["test/reliability"] = wandb.Image(str(reliability), caption="reliability of the test fold's "
                                                     "grade probabilities and P(referable)")
        best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        for run in runs:
            if logged:
                run.log(logged)
            run.summary.update(notes)
            if key is not None:
                run.summary["pretext/wandb_run_id"] = f"pretext-{key}"
            if not cfg.get("wandb_artifacts", False):
                continue
            if best:
                log_grader_artifact(run, Path(best), cfg.arm,
                                    JobIdentity.from_config(cfg).alias(),
                                    json_safe({**run_record, **{k: float(v) for k, v in
                                                                trainer.callback_metrics.items()}}))
            # named where it exists: found online (the lineage edge); offline W&B cannot look, artifacts on then
            if key is not None and (link_pretext(run, cfg.pretext.name, key) or run.offline):
                run.summary["pretext/artifact"] = pretext_artifact_name(cfg.pretext.name, key)
    return publish
