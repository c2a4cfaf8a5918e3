"""Referable-DR ROC and precision-recall curves of a stage's predictions, drawn beside the run (``roc_test.png``,
``pr_test.png``) for a reader without W&B; the fine-tune's W&B run shows the same points (``wandb_publish``).

The points are scikit-learn's, of the prediction file's ``referable`` column (the head's own score, the one whose
area is ``test/auroc_referable``) against ``grade >= 2``. A stage holding one side of the decision only has no
curve: one log line says so and nothing is drawn.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from ssl_dr.models.metrics import REFERABLE_GRADE
from ssl_dr.run_contract import EXTERNAL_PREDICTIONS, PR_PLOT, ROC_PLOT, TEST_PREDICTIONS, write_atomic

log = logging.getLogger(__name__)

PREDICTIONS = {"test": TEST_PREDICTIONS, "external": EXTERNAL_PREDICTIONS}
"""The prediction file each stage's curves are read from."""


@dataclass(frozen=True)
class ReferableCurves:
    """One stage's ROC and precision-recall points (scikit-learn's, in its order) and their areas."""

    fpr: np.ndarray
    tpr: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    auroc: float
    average_precision: float
    referable: int
    images: int


def referable_curves(predictions: pd.DataFrame) -> ReferableCurves | None:
    """The curves of ``predictions`` (``grade``, ``referable`` columns); None with one side of the decision only."""
    truth = predictions["grade"].to_numpy() >= REFERABLE_GRADE
    if truth.all() or not truth.any():
        return None
    scores = predictions["referable"].to_numpy(dtype=float)
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    return ReferableCurves(fpr, tpr, precision, recall, float(roc_auc_score(truth, scores)),
                           float(average_precision_score(truth, scores)), int(truth.sum()), len(truth))


def stage_curves(out_dir: Path, stage: str = "test") -> ReferableCurves | None:
    """The curves of ``stage``'s prediction file in ``out_dir`` (None: no file, or no curve)."""
    path = Path(out_dir) / PREDICTIONS[stage]
    return referable_curves(pd.read_csv(path)) if path.is_file() else None


def write_curves(out_dir: Path, stage: str = "test") -> list[Path]:
    """``roc_<stage>.png`` and ``pr_<stage>.png`` in ``out_dir``; none (and one log line saying why) where the
    stage's images are all referable or all not, none without a prediction file (``trainer.fast_dev_run``)."""
    path = Path(out_dir) / PREDICTIONS[stage]
    if not path.is_file():
        return []
    predictions = pd.read_csv(path)
    curves = referable_curves(predictions)
    if curves is None:
        side = "non-referable" if (predictions["grade"] < REFERABLE_GRADE).all() else "referable"
        log.info(f"no referable ROC/PR curve for {stage}: its {len(predictions)} image(s) are all {side} "
                 f"(grade >= {REFERABLE_GRADE} on one side of the decision only)")
        return []
    return [write_atomic(path.with_name(name.format(stage=stage)),
                         lambda tmp, figure=figure: figure.savefig(tmp, format="png", dpi=100))
            for name, figure in ((ROC_PLOT, roc_figure(curves, stage)), (PR_PLOT, pr_figure(curves, stage)))]


def roc_figure(curves: ReferableCurves, stage: str) -> Figure:
    """True positive rate against false positive rate, the chance diagonal for scale."""
    figure, ax = _axes()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.plot(curves.fpr, curves.tpr, color="C0", lw=2, label=f"AUROC {curves.auroc:.3f}")
    ax.set(xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)")
    ax.set_title(_title(curves, stage), fontsize=10)
    ax.legend(loc="lower right")
    return figure


def pr_figure(curves: ReferableCurves, stage: str) -> Figure:
    """Precision against recall (scikit-learn's step curve), the share of referable images for scale."""
    figure, ax = _axes()
    share = curves.referable / curves.images
    ax.axhline(share, ls="--", color="grey", lw=1, label=f"share referable {share:.2f}")
    ax.plot(curves.recall, curves.precision, color="C1", lw=2, drawstyle="steps-post",
            label=f"average precision {curves.average_precision:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (positive predictive value)")
    ax.set_title(_title(curves, stage), fontsize=10)
    ax.legend(loc="lower left")
    return figure


def _axes() -> tuple[Figure, Axes]:
    figure = Figure(figsize=(4.8, 4.6), layout="tight")  # no pyplot: no global figure state in a training process
    ax = figure.subplots()
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    return figure, ax


def _title(curves: ReferableCurves, stage: str) -> str:
    return f"{stage}: {curves.referable} of {curves.images} images referable (grade >= {REFERABLE_GRADE})"
