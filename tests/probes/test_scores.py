"""A probe's scores are the fine-tune's metric keys, equal to scikit-learn's figures on the same predictions, and
its prediction file has the fine-tune's columns."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, log_loss, roc_auc_score

from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.probes.scores import probe_scores, write_predictions
from ssl_dr.run_contract import TEST_PREDICTIONS

FINETUNE_KEYS = {"qwk", "qwk_kaggle", "acc", "auroc_referable", "loss", "confusion", "sensitivity_referable",
                 "specificity_referable", "grades_predicted",
                 *(f"{kind}_grade{g}" for kind in ("recall", "precision") for g in range(5))}
"""README, "Files every run leaves": the test/* (and val/*) figures of a fine-tune's metrics.json."""


def random_predictions(n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, n)
    logits = rng.normal(0, 1, (n, 5)) + 2 * np.eye(5)[grades]  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return grades, probs


def test_probe_scores_equal_scikit_learns_on_the_same_predictions():
    grades, probs = random_predictions()
    preds = probs.argmax(axis=1)
    scores = probe_scores("test", grades, probs)
    assert set(scores) == {f"test/{key}" for key in FINETUNE_KEYS}
    assert scores["test/qwk"] == pytest.approx(cohen_kappa_score(grades, preds, weights="quadratic"))
    assert scores["test/auroc_referable"] == pytest.approx(roc_auc_score(grades >= 2, probs[:, 2:].sum(axis=1)),
                                                           abs=1e-6)
    assert scores["test/acc"] == pytest.approx(accuracy_score(grades, preds))
    assert scores["test/loss"] == pytest.approx(log_loss(grades, probs))
    matrix = confusion_matrix(grades, preds)
    assert scores["test/confusion"] == matrix.tolist()
    assert scores["test/recall_grade3"] == pytest.approx(matrix[3, 3] / matrix[3].sum())
    assert scores["test/precision_grade1"] == pytest.approx(matrix[1, 1] / matrix[:, 1].sum())
    assert scores["test/sensitivity_referable"] == pytest.approx(((preds >= 2) & (grades >= 2)).sum()
                                                                 / (grades >= 2).sum())
    assert scores["test/grades_predicted"] == len(set(preds))
    # the paper's qwk_kaggle reads the median grade of the probabilities: P(grade >= k) > 0.5 counted
    median = (np.flip(np.flip(probs, 1).cumsum(1), 1)[:, 1:] > 0.5).sum(axis=1)
    assert scores["test/qwk_kaggle"] == pytest.approx(cohen_kappa_score(grades, median, weights="quadratic"))


def test_undefined_figures_are_nan_not_zero():
    grades = np.array([0, 0, 1, 1])  # nobody referable; grade 4 never seen nor predicted
    probs = np.eye(5)[[0, 1, 1, 1]]
    scores = probe_scores("val", grades, probs)
    assert np.isnan(scores["val/auroc_referable"]) and np.isnan(scores["val/recall_grade4"])
    assert np.isfinite(scores["val/loss"])  # a probability of 0 for the true grade is clipped, not infinite
    assert scores["val/grades_predicted"] == 2


def test_probabilities_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"expected \(3, 5\)"):
        probe_scores("test", [0, 1, 2], np.ones((3, 4)) / 4)


def test_the_prediction_file_has_the_fine_tunes_columns_and_recomputes_qwk(tmp_path):
    grades, probs = random_predictions(20)
    records = [Record(f"img{i}", tmp_path / f"img{i}.png", int(g)) for i, g in enumerate(grades)]
    path = write_predictions(tmp_path / TEST_PREDICTIONS, records, probs)
    table = pd.read_csv(path)
    assert list(table.columns) == ["id_code", "grade", "pred", "referable", "p0", "p1", "p2", "p3", "p4"]
    assert list(table["id_code"]) == [r.id_code for r in records]
    np.testing.assert_allclose(table[[f"p{k}" for k in range(5)]].to_numpy(), probs)
    np.testing.assert_allclose(table["referable"], probs[:, 2:].sum(axis=1))
    assert cohen_kappa_score(table["grade"], table["pred"], weights="quadratic") == pytest.approx(
        probe_scores("test", grades, probs)["test/qwk"])


def test_an_empty_slice_scores_nan_not_a_crash():
    scores = probe_scores("val", np.zeros(0, dtype=int), np.zeros((0, NUM_GRADES)))
    assert np.isnan(scores["val/qwk"]) and np.isnan(scores["val/auroc_referable"]) and np.isnan(scores["val/loss"])
    assert scores["val/confusion"] == [[0] * NUM_GRADES] * NUM_GRADES and scores["val/grades_predicted"] == 0


def test_linear_probe_with_no_validation_image_names_the_fix():
    from ssl_dr.errors import DataError
    from ssl_dr.probes.linear import fit_linear_probe

    x = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(DataError, match="data.label_fraction or data.val_fraction, or use protocol=knn"):
        fit_linear_probe(x, np.array([0, 1, 0, 1, 2, 2]), x[:0], np.zeros(0, dtype=int))
