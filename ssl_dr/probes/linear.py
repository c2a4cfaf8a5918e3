"""Linear probe: standardised frozen features -> multinomial logistic regression (scikit-learn, lbfgs), as
RETFound's linear probing and RETFound-Green's logistic regression score a representation.

The inverse regularisation strength C is chosen from a grid by validation QWK, with the fine-tune's rule (best
``val/qwk``; a tie goes to the stronger regularisation, the smaller C; NaN counts as worst, as Lightning's
``ModelCheckpoint`` does). The model kept is the one fitted on the training slice for that C: validation selects,
it never trains, and the test slice is only predicted.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.errors import DataError
from ssl_dr.models.metrics import quadratic_weighted_kappa

log = logging.getLogger(__name__)

DEFAULT_C_GRID = tuple(float(c) for c in np.logspace(-3, 2, 11))
"""1e-3 .. 1e2, half a decade apart."""
DEFAULT_MAX_ITER = 2000


@dataclass(frozen=True)
class LinearProbe:
    """The chosen ``C`` (None: one grade in the training slice, nothing to fit), the validation QWK of every C
    tried, and the chosen model's grade probabilities ``(N, 5)`` on validation and test."""

    C: float | None
    val_qwk: dict[float, float]
    val_probs: np.ndarray
    test_probs: np.ndarray | None
    model: Pipeline | None
    only_grade: int | None = None

    def predict(self, features: np.ndarray) -> np.ndarray:
        """``(N, 5)`` grade probabilities of other images (an external set) from the chosen model."""
        if self.model is None:
            return np.tile(np.eye(NUM_GRADES)[self.only_grade], (len(features), 1))
        return grade_probabilities(self.model, np.asarray(features, dtype=np.float64))


def grade_probabilities(model: Pipeline, features: np.ndarray) -> np.ndarray:
    """``(N, 5)``: the model's class probabilities placed in their grade's column, 0 for a grade it never saw."""
    probs = np.zeros((len(features), NUM_GRADES))
    probs[:, model.classes_] = model.predict_proba(features)
    return probs


def fit_model(train_x: np.ndarray, train_grades: np.ndarray, C: float, max_iter: int = DEFAULT_MAX_ITER) -> Pipeline:
    """StandardScaler + LogisticRegression(C) fitted on the training slice (lbfgs: multinomial for > 2 grades).

    On one BLAS/OpenMP thread: these matrices are small (hundreds to thousands x 1024), and on 2 shared cores the
    threads' spin-waiting made a fit 30x slower (413 IDRiD images, 1088-d: 13 s on 2 threads, 0.4 s on 1)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter))
    with threadpool_limits(limits=1):
        return model.fit(train_x, train_grades)


def fit_linear_probe(train_x: np.ndarray, train_grades: np.ndarray, val_x: np.ndarray, val_grades: np.ndarray,
                     test_x: np.ndarray | None = None, c_grid: Sequence[float] = DEFAULT_C_GRID,
                     max_iter: int = DEFAULT_MAX_ITER) -> LinearProbe:
    """Fit one model per C on the training slice, keep the one with the best validation QWK, predict val and test.
    Features are read as float64: fitted on the stored float32, the probabilities sum to 1 only within 1e-7."""
    train_x, val_x = np.asarray(train_x, dtype=np.float64), np.asarray(val_x, dtype=np.float64)
    test_x = None if test_x is None else np.asarray(test_x, dtype=np.float64)
    train_grades = np.asarray(train_grades, dtype=np.int64)
    if len(val_grades) == 0:
        raise DataError("protocol=linear chooses its C on the validation slice, which is empty here: raise "
                        "data.label_fraction or data.val_fraction, or use protocol=knn (nothing chosen on validation)")
    if not c_grid:
        raise ValueError("the linear probe needs at least one C in its grid")
    present = np.unique(train_grades)
    if len(present) == 1:  # logistic regression cannot fit one class: the only grade seen, with certainty
        log.info("linear probe: the training slice holds grade %d only; every image gets it", present[0])
        constant = np.eye(NUM_GRADES)[present[0]]
        return LinearProbe(None, {}, np.tile(constant, (len(val_x), 1)),
                           None if test_x is None else np.tile(constant, (len(test_x), 1)), None,
                           int(present[0]))
    best: tuple[float, Pipeline, np.ndarray] | None = None
    best_qwk = -np.inf
    curve: dict[float, float] = {}
    unconverged = []
    for C in sorted(float(c) for c in c_grid):  # ascending: a later C must be strictly better to win a tie
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            model = fit_model(train_x, train_grades, C, max_iter)
        if any(issubclass(w.category, ConvergenceWarning) for w in caught):
            unconverged.append(C)
        val_probs = grade_probabilities(model, val_x)
        curve[C] = quadratic_weighted_kappa(val_grades, val_probs.argmax(axis=1))
        score = -np.inf if np.isnan(curve[C]) else curve[C]
        if best is None or score > best_qwk:
            best, best_qwk = (C, model, val_probs), score
    if unconverged:
        log.info("linear probe: lbfgs did not converge in %d iterations for C = %s (raise max_iter)", max_iter,
                 ", ".join(f"{c:g}" for c in unconverged))
    C, model, val_probs = best
    log.info("linear probe: C = %g chosen on validation (val/qwk %.4f; grid %s)", C, curve[C],
             ", ".join(f"{c:g}: {q:.3f}" for c, q in curve.items()))
    return LinearProbe(C, curve, val_probs, None if test_x is None else grade_probabilities(model, test_x), model)
