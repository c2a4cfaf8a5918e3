"""What a screening programme reads besides QWK: an operating point fixed on validation, calibration, and the
uncertainty of one run's own test score.

Pure functions of per-image arrays (grades, grade probabilities, referable scores, patient groups), so the
fine-tune, the probes and the external set are scored by the same code (``ssl_dr.training.screening`` wires them).
Every figure is NaN where it is undefined (a one-sided slice), never 0.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import DegenerateDataWarning, bootstrap, rankdata
from sklearn.metrics import roc_curve
from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.errors import ConfigError
from ssl_dr.models.metrics import REFERABLE_GRADE, quadratic_weighted_kappa

TARGETS = ("sensitivity", "specificity")
TEMPERATURE_BOUNDS = (0.05, 20.0)
"""Temperatures searched (log scale): far beyond what a trained grader needs, finite so the fit always ends."""


def referable_target(setting: Mapping[str, Any] | None) -> tuple[str, float] | None:
    """``evaluation.referable_target`` (``{sensitivity: 0.9, specificity: null}``: one target set, or none for no
    operating point) as ``(kind, value)``; anything else is refused naming the field and the fix."""
    given = {k: v for k, v in dict(setting or {}).items() if v is not None}
    if not set(given) <= set(TARGETS) or len(given) > 1:
        raise ConfigError(f"evaluation.referable_target={dict(setting or {})} must set one of {', '.join(TARGETS)} and "
                          "leave the other null, e.g. evaluation.referable_target.sensitivity=null "
                          "evaluation.referable_target.specificity=0.8")
    if not given:
        return None
    kind, value = next(iter(given.items()))
    if not isinstance(value, int | float) or not 0 < float(value) <= 1:
        raise ConfigError(f"evaluation.referable_target.{kind}={value!r} must be a share in (0, 1]")
    return str(kind), float(value)


def _sides(grades: np.ndarray) -> np.ndarray:
    return np.asarray(grades) >= REFERABLE_GRADE


def choose_threshold(grades: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, kind: str,
                     target: float) -> float:
    """The threshold on the referable score (refer when ``score >= threshold``) that meets ``target`` on these
    (validation) images with the best other figure: for a sensitivity target the highest threshold whose
    sensitivity reaches it, for a specificity target the lowest whose specificity does. NaN on a one-sided slice."""
    referable = _sides(grades)
    if referable.all() or not referable.any():
        return math.nan
    fpr, tpr, thresholds = roc_curve(referable, np.asarray(scores, dtype=float), drop_intermediate=False)
    if kind == "sensitivity":
        chosen = float(thresholds[int(np.argmax(tpr >= target - 1e-12))])
    else:
        chosen = float(thresholds[int(np.nonzero(1 - fpr >= target - 1e-12)[0][-1])])
    # scikit-learn's first threshold is +inf (refer nobody); a finite number above every score says the same
    return chosen if math.isfinite(chosen) else float(np.nextafter(np.max(scores), np.inf))


def at_threshold(grades: Sequence[int] | np.ndarray, scores: Sequence[float] | np.ndarray, threshold: float
                 ) -> dict[str, float]:
    """Sensitivity and specificity of "refer when score >= threshold" (NaN without a denominator or threshold)."""
    referable, refer = _sides(grades), np.asarray(scores, dtype=float) >= threshold
    if math.isnan(threshold):
        return {"sensitivity": math.nan, "specificity": math.nan}
    return {"sensitivity": float(refer[referable].mean()) if referable.any() else math.nan,
            "specificity": float((~refer[~referable]).mean()) if (~referable).any() else math.nan}


def calibration_errors(grades: Sequence[int] | np.ndarray, probs: np.ndarray, bins: int) -> dict[str, float]:
    """``ece``: the expected calibration error of the top grade probability (torchmetrics' multiclass,
    L1, ``bins`` equal-width bins); ``ece_referable``: the same for P(grade >= 2) against being referable."""
    y = torch.as_tensor(np.array(grades, dtype=np.int64))
    if not len(y):
        return {"ece": math.nan, "ece_referable": math.nan}
    p = torch.as_tensor(np.array(probs, dtype=np.float32))
    return {"ece": float(multiclass_calibration_error(p, y, NUM_GRADES, n_bins=bins, norm="l1")),
            "ece_referable": float(binary_calibration_error(p[:, REFERABLE_GRADE:].sum(dim=1).clamp(0, 1),
                                                            (y >= REFERABLE_GRADE).long(), n_bins=bins, norm="l1"))}


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, bins: int) -> dict[str, np.ndarray]:
    """Per equal-width bin: mean confidence, observed frequency and count (empty bins NaN): what a reliability
    diagram draws and what ECE sums (bins closed on the left, the last on both sides, as torchmetrics bins)."""
    confidence, correct = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    index = np.clip(np.floor(confidence * bins).astype(int), 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"edges": np.linspace(0, 1, bins + 1), "count": count,
                "confidence": np.bincount(index, confidence, bins) / count,
                "frequency": np.bincount(index, correct, bins) / count}


def temper(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Grade probabilities with the logits divided by ``temperature``: ``softmax(log p / T)`` (the softmax of the
    logits over T, since log p differs from the logits by one constant per image). Argmax never moves."""
    logits = np.log(np.clip(np.asarray(probs, dtype=float), 1e-12, None)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    tempered = np.exp(logits)
    return tempered / tempered.sum(axis=1, keepdims=True)


def nll(grades: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true grades."""
    picked = np.asarray(probs, dtype=float)[np.arange(len(grades)), np.asarray(grades, dtype=int)]
    return float(-np.log(np.clip(picked, 1e-12, None)).mean())


def fit_temperature(grades: Sequence[int] | np.ndarray, probs: np.ndarray) -> float:
    """Guo et al.'s temperature scaling: the one T > 0 minimising the validation NLL of ``temper(probs, T)``
    (bounded scalar search on log T). 1.0 (no change) on an empty slice."""
    y = np.asarray(grades, dtype=int)
    if not len(y):
        return 1.0
    low, high = np.log(TEMPERATURE_BOUNDS)
    found = minimize_scalar(lambda log_t: nll(y, temper(probs, float(np.exp(log_t)))), bounds=(low, high),
                            method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def auroc_referable(grades: np.ndarray, scores: np.ndarray) -> float:
    """Referable AUROC as the Mann-Whitney U of the scores (ties count half: scikit-learn's value), NaN on a
    one-sided set; ranks instead of ``roc_auc_score`` because a bootstrap calls it a thousand times."""
    referable = _sides(grades)
    positives = int(referable.sum())
    negatives = len(referable) - positives
    if not positives or not negatives:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[referable].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def bootstrap_intervals(grades: Sequence[int] | np.ndarray, preds: Sequence[int] | np.ndarray,
                          scores: Sequence[float] | np.ndarray, groups: Sequence[str], resamples: int, level: float,
                          seed: int) -> dict[str, float]:
    """Percentile bootstrap intervals of QWK and referable AUROC, resampling patients (``groups``: both eyes of a
    patient are drawn together) with scipy.stats.bootstrap, ``resamples`` draws from ``seed``. A resample with one
    side only has no AUROC: the interval is NaN when any has none (too few referable patients to say)."""
    y, p, s = np.asarray(grades, dtype=int), np.asarray(preds, dtype=int), np.asarray(scores, dtype=float)
    names, members = np.unique(np.asarray(groups, dtype=str), return_inverse=True)
    rows = [np.nonzero(members == g)[0] for g in range(len(names))]
    statistics: dict[str, Callable[[np.ndarray], float]] = {
        "qwk": lambda idx: quadratic_weighted_kappa(y[idx], p[idx]),
        "auroc_referable": lambda idx: auroc_referable(y[idx], s[idx])}
    out: dict[str, float] = {}
    for name, statistic in statistics.items():
        low = high = math.nan
        if len(rows) > 1 and not math.isnan(statistic(np.arange(len(y)))):
            def over_patients(sample: np.ndarray, statistic: Callable[[np.ndarray], float] = statistic) -> float:
                return statistic(np.concatenate([rows[int(g)] for g in sample]))
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateDataWarning)  # every resample alike: low == high, said
                found = bootstrap((np.arange(len(rows)),), over_patients, n_resamples=resamples,
                                  confidence_level=level, method="percentile", vectorized=False,
                                  random_state=np.random.default_rng(seed))
            low, high = float(found.confidence_interval.low), float(found.confidence_interval.high)
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = low, high
    return out
