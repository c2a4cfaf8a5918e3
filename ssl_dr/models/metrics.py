"""Quadratic weighted kappa, ours and the NeurIPS 2020 code's ``qw_kappa_kaggle`` variant.

Our ``{val,test}/qwk`` is torchmetrics' ``MulticlassCohenKappa(weights="quadratic")`` on the head's decoded
grades: every image counts. The paper's code (HealthML/self-supervised-3d-tasks) scored the retina task
with ``qw_kappa_kaggle`` instead, which can leave images out without saying so (see ``qw_kappa_kaggle``);
``{val,test}/qwk_kaggle`` logs that variant next to ours so numbers can be compared with the paper's.
``{val,test}/auroc_referable`` (``ReferableAUROC``) scores the screening decision, grade >= 2, as the DR
screening literature reports it. ``confusion_summary`` reads the per-grade recall and precision and the
referable sensitivity and specificity off a stage's 5x5 confusion matrix (``{val,test}/confusion``).
``quadratic_weighted_kappa`` is a small numpy QWK for hot loops (regression threshold tuning), where
sklearn's input validation would cost more than the kappa itself.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import cohen_kappa_score
from torchmetrics import Metric
from torchmetrics.classification import BinaryAUROC
from torchmetrics.utilities import dim_zero_cat

from ssl_dr.data.records import NUM_GRADES

KAGGLE_THRESHOLD = 0.5
"""A cumulative output counts as "on" when strictly above this (the paper's ``y > threshold``)."""


def quadratic_weighted_kappa(grades: np.ndarray, preds: np.ndarray, num_classes: int = NUM_GRADES) -> float:
    """Cohen's kappa with quadratic weights over ``num_classes`` grades (same value as sklearn's
    ``cohen_kappa_score(..., weights="quadratic")`` and torchmetrics'); NaN where it is undefined (observed
    and chance disagreement both zero, e.g. every label and prediction is the same grade)."""
    y = np.asarray(grades, dtype=np.int64).ravel()
    p = np.asarray(preds, dtype=np.int64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"grades {y.shape} and preds {p.shape} differ in length")
    if len(y) and (min(y.min(), p.min()) < 0 or max(y.max(), p.max()) >= num_classes):
        raise ValueError(f"grades and preds must lie in 0..{num_classes - 1}")
    observed = np.bincount(y * num_classes + p, minlength=num_classes ** 2).reshape(num_classes, num_classes)
    total = observed.sum()
    if total == 0:
        return float("nan")
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total
    grid = np.arange(num_classes)
    weights = (grid[:, None] - grid[None, :]) ** 2
    chance = float((weights * expected).sum())
    return 1.0 - float((weights * observed).sum()) / chance if chance > 0 else float("nan")


def kaggle_cumulative(grades: np.ndarray, num_classes: int = NUM_GRADES) -> np.ndarray:
    """Grades -> the paper's label layout: grade ``k`` -> ``k + 1`` leading ones in ``num_classes`` columns
    (``2 -> [1, 1, 1, 0, 0]``)."""
    grades = np.asarray(grades, dtype=np.int64)
    return (np.arange(num_classes)[None, :] <= grades[:, None]).astype(np.float32)


def kaggle_decode(outputs: np.ndarray, threshold: float = KAGGLE_THRESHOLD) -> np.ndarray:
    """The paper's decoding, ``(outputs > threshold).sum(axis=1) - 1``: counts every output above the
    threshold (not only the leading ones), and gives -1 when none is."""
    return (np.asarray(outputs) > threshold).astype(np.int64).sum(axis=1) - 1


def qw_kappa_kaggle(y: np.ndarray, y_pred: np.ndarray, threshold: float = KAGGLE_THRESHOLD) -> float:
    """QWK as the NeurIPS 2020 code (HealthML/self-supervised-3d-tasks, ``score_kappa_kaggle``) scores retina.

    ``y`` and ``y_pred`` are ``(N, 5)`` cumulative outputs (grade ``k`` = ``k + 1`` leading ones), both
    decoded with ``kaggle_decode`` and scored with ``cohen_kappa_score(labels=[0, 1, 2, 3, 4],
    weights="quadratic")``.

    Difference from our QWK: ``qw_kappa_kaggle`` decodes ``(outputs > 0.5).sum(1) - 1`` and silently drops
    every image whose outputs are all <= 0.5 (decoded -1, which is not in ``labels``, so sklearn's
    confusion matrix leaves the row out), whereas our ``qwk`` counts every image.

    For our heads the first cumulative output is P(grade >= 0) = 1 by construction, so -1 never occurs
    and no image is dropped; what remains is the decoding (for the classification head it reads the
    median grade of the softmax, P(grade >= k) > 0.5, where our ``qwk`` reads its argmax).
    """
    grades = kaggle_decode(y, threshold)
    preds = kaggle_decode(y_pred, threshold)
    with warnings.catch_warnings():  # undefined (one grade in common): NaN, said once by DRClassifier, not per epoch
        warnings.simplefilter("ignore", UndefinedMetricWarning)  # scikit-learn >= 1.6
        warnings.simplefilter("ignore", RuntimeWarning)  # older: 0 / 0
        return float(cohen_kappa_score(grades, preds, labels=list(range(NUM_GRADES)), weights="quadratic"))


class KaggleKappa(Metric):
    """``qw_kappa_kaggle`` over a whole stage, across DDP ranks: the cumulative outputs and grades are
    concatenated (``cat`` states) from every rank before the kappa is computed once."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.add_state("cumulative", default=[], dist_reduce_fx="cat")
        self.add_state("grades", default=[], dist_reduce_fx="cat")

    def update(self, cumulative: torch.Tensor, grades: torch.Tensor) -> None:
        """``cumulative``: ``(B, 5)`` P(grade >= k), k = 0..4; ``grades``: ``(B,)`` true grades."""
        self.cumulative.append(cumulative.detach().float())
        self.grades.append(grades.detach().long())

    def compute(self) -> torch.Tensor:
        # a list of batches on one process; after a DDP sync, torchmetrics has already concatenated it
        if isinstance(self.grades, list) and not self.grades:
            return torch.tensor(float("nan"))
        grades = dim_zero_cat(self.grades).cpu().numpy()
        cumulative = dim_zero_cat(self.cumulative).cpu().numpy()
        return torch.tensor(qw_kappa_kaggle(kaggle_cumulative(grades), cumulative), dtype=torch.float32)


REFERABLE_GRADE = 2
"""Referable diabetic retinopathy: moderate non-proliferative or worse (grade >= 2), the screening decision."""


class ReferableAUROC(BinaryAUROC):
    """AUROC of referable DR (grade >= ``REFERABLE_GRADE``) from a head's ``referable`` score, over a whole
    stage and every DDP rank (torchmetrics' exact, threshold-free AUROC).

    NaN where a stage holds only one side of the decision (every image referable, or none: a small
    synthetic fold, a 5 % split's validation slice). torchmetrics returns 0 there with a warning, a number
    that would read as "always wrong" in a table."""

    def update(self, score: torch.Tensor, grades: torch.Tensor) -> None:  # type: ignore[override]
        """``score``: ``(B,)`` the head's ``referable`` score; ``grades``: ``(B,)`` true grades 0..4."""
        super().update(score.detach().float(), (grades >= REFERABLE_GRADE).long())

    def compute(self) -> torch.Tensor:
        if isinstance(self.target, list) and not self.target:  # nothing seen (as KaggleKappa)
            return torch.tensor(float("nan"))
        target = dim_zero_cat(self.target)
        if target.min() == target.max():
            return torch.tensor(float("nan"))
        return super().compute()


def confusion_summary(confusion: np.ndarray | torch.Tensor) -> dict[str, float]:
    """Per-grade and screening figures of one stage from its ``(5, 5)`` confusion matrix (rows: true grade,
    columns: predicted; torchmetrics' ``MulticlassConfusionMatrix`` layout, summed over DDP ranks).

    ``recall_grade<k>``: the share of grade-k images graded k; ``precision_grade<k>``: the share of images
    graded k that are k. ``sensitivity_referable`` / ``specificity_referable``: the decision "grade >= 2" as
    the *decoded* grade makes it (the operating point a user of the grader gets; the threshold-free view is
    ``auroc_referable``). Read off one matrix rather than separate torchmetrics objects so that every figure
    describes the same predictions, and a figure without a denominator (no grade-4 image in a small fold, no
    image graded 3) is NaN, where torchmetrics' per-class recall would print 0, a number that reads as
    "always missed".
    """
    matrix = np.asarray(confusion.cpu() if isinstance(confusion, torch.Tensor) else confusion, dtype=float)
    correct, true_totals, predicted_totals = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    summary: dict[str, float] = {}
    for grade in range(NUM_GRADES):
        summary[f"recall_grade{grade}"] = _share(correct[grade], true_totals[grade])
        summary[f"precision_grade{grade}"] = _share(correct[grade], predicted_totals[grade])
    r = REFERABLE_GRADE
    summary["sensitivity_referable"] = _share(matrix[r:, r:].sum(), matrix[r:, :].sum())
    summary["specificity_referable"] = _share(matrix[:r, :r].sum(), matrix[:r, :].sum())
    return summary


def grades_predicted(confusion: list[list[int]] | np.ndarray) -> int:
    """How many distinct grades a stage's predictions use (columns of the confusion matrix with a count):
    1 means the grader collapsed to one grade, which says more about its training than its QWK does."""
    return int((np.asarray(confusion).sum(axis=0) > 0).sum())


def _share(part: float, whole: float) -> float:
    return float(part / whole) if whole else float("nan")
