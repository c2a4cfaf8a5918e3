"""What a fine-tune's W&B run holds beyond its logged curves, for a researcher who reads runs in W&B.

- Every ``val/*`` value of the summary is the **tested checkpoint's** (the value that chose it, and the rest
  of that one validation), not whatever the last validation happened to score; the validation curves are drawn
  against ``val/step``, the optimiser steps done, the step metrics.json and train.log name.
- The run's whole ``metrics.json`` record sits in the summary under ``metrics.json``, so every number of
  the result file (labels read, pretext key, tested step, collapse check, per-grade figures) can be shown
  in a runs table or filtered on, without the file.
- The confusion matrices of the tested checkpoint on validation and on the test fold are W&B plots
  (``val/confusion_matrix``, ``test/confusion_matrix``): where per-grade failures show first.

Everything here runs once per phase, after training, never on the hot path. On a DDP rank other than 0
Lightning's W&B run is a no-op, so nothing is written twice.
"""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch.loggers import Logger, WandbLogger

from ssl_dr.data.records import GRADE_NAMES

SUMMARY_KEY = "metrics.json"
"""The summary entry holding the run's result record."""
VAL_STEP = "val/step"
"""Logged by ``DRClassifier`` at every validation: the optimiser steps done (``trainer.global_step``)."""


def wandb_runs(loggers: list[Logger]) -> list[Any]:
    return [logger.experiment for logger in loggers if isinstance(logger, WandbLogger)]


def define_finetune_metrics(loggers: list[Logger]) -> None:
    """Before the first validation: ``val/*`` curves are drawn against ``val/step`` (Lightning's own logging step
    lags one behind the steps done when a validation runs inside the training loop)."""
    for run in wandb_runs(loggers):
        run.define_metric(VAL_STEP)
        run.define_metric("val/*", step_metric=VAL_STEP)


def publish_finetune_record(loggers: list[Logger], record: dict[str, Any]) -> None:
    """The tested checkpoint's confusion matrices as plots, and ``record`` (metrics.json) in the summary."""
    runs = wandb_runs(loggers)
    if not runs:
        return
    plots = {f"{stage}/confusion_matrix": confusion_plot(record[f"{stage}/confusion"], stage)
             for stage in ("val", "test") if record.get(f"{stage}/confusion")}
    tested = {k: json_safe(v) for k, v in record.items() if k.startswith("val/") and isinstance(v, int | float)}
    for run in runs:
        if plots:
            run.log(plots)
        run.summary.update(tested)  # the tested checkpoint's validation, all of it (and the step it was at)
        run.summary[SUMMARY_KEY] = json_safe(record)


def confusion_plot(matrix: list[list[int]], stage: str) -> Any:
    """W&B's confusion-matrix chart of a count matrix (rows true grade, columns predicted). The chart takes
    one (true, predicted) pair per image, so each cell is expanded into its count of pairs."""
    import wandb

    truth, predicted = [], []
    for true_grade, row in enumerate(matrix):
        for predicted_grade, count in enumerate(row):
            truth += [true_grade] * int(count)
            predicted += [predicted_grade] * int(count)
    names = [f"{grade} {name}" for grade, name in enumerate(GRADE_NAMES)]
    return wandb.plot.confusion_matrix(y_true=truth, preds=predicted, class_names=names,
                                       title=f"{stage}: true grade (rows) vs predicted grade, tested checkpoint")


def json_safe(value: Any) -> Any:
    """NaN/inf become None (W&B's summary is JSON; a NaN AUROC on a one-sided fold must not break it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
