"""The screening figures against by-hand computations on small cases (ssl_dr.models.screening)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.metrics import roc_auc_score

from ssl_dr.errors import ConfigError
from ssl_dr.models.screening import (
    at_threshold,
    auroc_referable,
    bootstrap_intervals,
    calibration_errors,
    choose_threshold,
    fit_temperature,
    nll,
    referable_target,
    reliability_bins,
    temper,
)

# 4 referable (grade >= 2) and 4 not; scores rank them imperfectly
GRADES = np.array([0, 0, 1, 1, 2, 2, 3, 4])
SCORES = np.array([0.1, 0.4, 0.35, 0.2, 0.3, 0.6, 0.7, 0.9])


def test_a_sensitivity_target_picks_the_highest_threshold_that_reaches_it():
    # refer at >= 0.6: 3 of 4 referable (0.75); at >= 0.3: all 4 (1.0) and 2 of 4 non-referable (0.4, 0.35) referred
    assert choose_threshold(GRADES, SCORES, "sensitivity", 0.75) == 0.6
    assert choose_threshold(GRADES, SCORES, "sensitivity", 0.9) == 0.3
    assert at_threshold(GRADES, SCORES, 0.3) == {"sensitivity": 1.0, "specificity": 0.5}


def test_a_specificity_target_picks_the_lowest_threshold_that_reaches_it():
    # specificity 1.0 needs threshold above 0.4: the lowest such score is 0.6
    assert choose_threshold(GRADES, SCORES, "specificity", 1.0) == 0.6
    assert at_threshold(GRADES, SCORES, 0.6) == {"sensitivity": 0.75, "specificity": 1.0}


def test_a_target_no_score_meets_refers_nobody_with_a_finite_threshold():
    grades, scores = np.array([0, 2]), np.array([0.9, 0.1])  # all wrong: specificity 1 only when nobody is referred
    threshold = choose_threshold(grades, scores, "specificity", 1.0)
    assert math.isfinite(threshold) and threshold > 0.9
    assert at_threshold(grades, scores, threshold) == {"sensitivity": 0.0, "specificity": 1.0}


def test_a_one_sided_slice_has_no_operating_point_nan_not_zero():
    assert math.isnan(choose_threshold([0, 1, 1], [0.1, 0.2, 0.3], "sensitivity", 0.9))
    figures = at_threshold([2, 3], [0.5, 0.6], 0.55)
    assert figures["sensitivity"] == 0.5 and math.isnan(figures["specificity"])
    assert all(math.isnan(v) for v in at_threshold(GRADES, SCORES, math.nan).values())


@pytest.mark.parametrize("setting", [{"sensitivity": 1.5}, {"recall": 0.9}, {"sensitivity": 0.9, "specificity": 0.8},
                                     {"sensitivity": "high", "specificity": None}])
def test_a_bad_target_is_refused_naming_the_field(setting):
    with pytest.raises(ConfigError, match="evaluation.referable_target"):
        referable_target(setting)


def test_targets_read_back():
    assert referable_target({"sensitivity": 0.9, "specificity": None}) == ("sensitivity", 0.9)
    assert referable_target({"sensitivity": None, "specificity": 0.8}) == ("specificity", 0.8)
    assert referable_target({"sensitivity": None, "specificity": None}) is None


def test_ece_equals_a_hand_computation():
    # two bins, closed on the left (torchmetrics): [0, 0.5) holds 0.4 (right); [0.5, 1] holds 0.5 (wrong), 0.9 and
    # 0.8 (right)
    probs = np.array([[0.4, 0.3, 0.1, 0.1, 0.1], [0.5, 0.2, 0.1, 0.1, 0.1],
                      [0.05, 0.9, 0.05, 0.0, 0.0], [0.0, 0.0, 0.8, 0.1, 0.1]])
    grades = np.array([0, 1, 1, 2])
    by_hand = (1 / 4) * abs(0.4 - 1.0) + (3 / 4) * abs((0.5 + 0.9 + 0.8) / 3 - 2 / 3)
    assert calibration_errors(grades, probs, bins=2)["ece"] == pytest.approx(by_hand, abs=1e-6)
    # P(referable) = 0.3, 0.3, 0.05, 1.0 against referable 0, 0, 0, 1: bin 1 mean 0.2167 vs 0; bin 2 1.0 vs 1
    referable = (3 / 4) * abs((0.3 + 0.3 + 0.05) / 3 - 0) + (1 / 4) * 0.0
    assert calibration_errors(grades, probs, bins=2)["ece_referable"] == pytest.approx(referable, abs=1e-6)
    binned = reliability_bins(probs.max(axis=1), probs.argmax(axis=1) == grades, 2)
    assert list(binned["count"]) == [1, 3] and binned["frequency"].tolist() == pytest.approx([1.0, 2 / 3])


def test_temperature_lowers_validation_nll_and_never_moves_a_grade():
    rng = np.random.default_rng(0)
    grades = rng.integers(0, 5, 300)
    logits = rng.normal(size=(300, 5)) * 4
    logits[np.arange(300), grades] += 2.0  # informative but over-confident
    probs = softmax(logits, axis=1)
    temperature = fit_temperature(grades, probs)
    assert temperature > 1  # over-confident: softened
    tempered = temper(probs, temperature)
    assert nll(grades, tempered) < nll(grades, probs)
    assert (tempered.argmax(axis=1) == probs.argmax(axis=1)).all()
    np.testing.assert_allclose(tempered, softmax(logits / temperature, axis=1), atol=1e-9)


def test_auroc_equals_scikit_learns_with_ties():
    scores = np.round(SCORES, 1)
    assert auroc_referable(GRADES, scores) == pytest.approx(roc_auc_score(GRADES >= 2, scores))
    assert math.isnan(auroc_referable(np.array([0, 1]), np.array([0.2, 0.4])))


def test_the_bootstrap_draws_patients_whole_is_seeded_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    grades = np.repeat(rng.integers(0, 5, 60), 2)  # both eyes of a patient share the grade
    preds = np.clip(grades + rng.integers(-1, 2, 120), 0, 4)
    scores = grades + rng.normal(size=120)
    groups = [f"patient{i // 2}" for i in range(120)]
    first = bootstrap_intervals(grades, preds, scores, groups, resamples=300, level=0.95, seed=7)
    assert first == bootstrap_intervals(grades, preds, scores, groups, resamples=300, level=0.95, seed=7)
    assert first != bootstrap_intervals(grades, preds, scores, groups, resamples=300, level=0.95, seed=8)
    from ssl_dr.models.metrics import quadratic_weighted_kappa
    assert first["qwk_ci_low"] < quadratic_weighted_kappa(grades, preds) < first["qwk_ci_high"]
    assert first["auroc_referable_ci_low"] < auroc_referable(grades, scores) <= first["auroc_referable_ci_high"]
    # by image instead of by patient: the pairs are counted as independent, so the interval is narrower
    by_image = bootstrap_intervals(grades, preds, scores, [str(i) for i in range(120)], 300, 0.95, 7)
    assert by_image["qwk_ci_high"] - by_image["qwk_ci_low"] < first["qwk_ci_high"] - first["qwk_ci_low"]


def test_a_one_sided_test_fold_has_nan_auroc_intervals_not_zero():
    found = bootstrap_intervals([0, 1, 0, 1], [0, 1, 1, 1], [0.1, 0.2, 0.3, 0.4], ["a", "b", "c", "d"], 50, 0.95, 0)
    assert math.isnan(found["auroc_referable_ci_low"]) and math.isnan(found["auroc_referable_ci_high"])
