"""A probe's grade probabilities scored under the fine-tune's own ``metrics.json`` keys, and its
``test_predictions.csv`` in the fine-tune's columns, so reports and scripts read probe and fine-tune runs alike.

The probabilities are read as the classification head reads its softmax (``ClassificationHead``: grade = argmax,
cumulative P(grade >= k) for ``qwk_kaggle``, P(grade >= 2) for ``auroc_referable``) and scored by the project's
metric functions (``ssl_dr.models.metrics``); ``loss`` is the negative log-likelihood of the true grades, what the
fine-tune's cross-entropy measures.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import confusion_matrix, log_loss

from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.models.heads import ClassificationHead
from ssl_dr.models.metrics import (
    ReferableAUROC,
    confusion_summary,
    grades_predicted,
    kaggle_cumulative,
    quadratic_weighted_kappa,
    qw_kappa_kaggle,
)
from ssl_dr.run_contract import write_atomic

_HEAD = ClassificationHead()


def _checked(grades: Sequence[int] | np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(grades, dtype=np.int64).ravel()
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (len(y), NUM_GRADES):
        raise ValueError(f"probabilities of shape {p.shape} for {len(y)} grades: expected ({len(y)}, {NUM_GRADES})")
    return y, p


def probe_scores(prefix: str, grades: Sequence[int] | np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """``{prefix}/qwk, qwk_kaggle, acc, auroc_referable, loss, confusion`` (5x5 list, rows true grade),
    ``recall_grade<k>, precision_grade<k>, sensitivity_referable, specificity_referable, grades_predicted`` of
    ``(N, 5)`` grade probabilities against the true grades; NaN where a figure is undefined, as the fine-tune."""
    y, p = _checked(grades, probs)
    if not len(y):  # an empty slice (a tiny debug split's validation): every figure undefined, as the fine-tune's
        matrix = np.zeros((NUM_GRADES, NUM_GRADES), dtype=np.int64)
        scores = {name: float("nan") for name in ("qwk", "qwk_kaggle", "acc", "auroc_referable", "loss")}
        scores.update({"confusion": matrix.tolist(), **confusion_summary(matrix), "grades_predicted": 0})
        return {f"{prefix}/{name}": value for name, value in scores.items()}
    activated = torch.from_numpy(p)
    preds = _HEAD.decode(activated).numpy()
    matrix = confusion_matrix(y, preds, labels=list(range(NUM_GRADES)))
    auroc = ReferableAUROC()
    auroc.update(_HEAD.referable(activated), torch.from_numpy(y))
    scores: dict[str, Any] = {
        "qwk": quadratic_weighted_kappa(y, preds),
        "qwk_kaggle": qw_kappa_kaggle(kaggle_cumulative(y), _HEAD.cumulative(activated).numpy()),
        "acc": float((preds == y).mean()),
        "auroc_referable": float(auroc.compute()),
        # scikit-learn clips p at float eps: a grade absent from a probe's training slice has p = 0, not -inf
        "loss": float(log_loss(y, p, labels=list(range(NUM_GRADES)))),
        "confusion": matrix.tolist(),
        **confusion_summary(matrix),
        "grades_predicted": grades_predicted(matrix),
    }
    return {f"{prefix}/{name}": value for name, value in scores.items()}


def write_predictions(path: str | Path, records: Sequence[Record], probs: np.ndarray) -> Path:
    """``id_code, grade, pred, referable, p0..p4`` per record, in the records' order (the fine-tune's columns;
    ``referable`` is P(grade >= 2)), written whole or not at all."""
    y, p = _checked([r.grade for r in records], probs)
    table = pd.DataFrame({"id_code": [r.id_code for r in records], "grade": y, "pred": p.argmax(axis=1),
                          "referable": _HEAD.referable(torch.from_numpy(p)).numpy(),
                          **{f"p{k}": p[:, k] for k in range(NUM_GRADES)}})
    return write_atomic(Path(path), lambda tmp: table.to_csv(tmp, index=False))
