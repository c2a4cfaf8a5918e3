"""Referable-DR curves beside the run (``ssl_dr.training.curves``) and the per-grade table W&B shows
(``wandb_media.per_grade_table``): the points are scikit-learn's of the predictions file, the table's figures
those of metrics.json's confusion matrix."""

from __future__ import annotations

import logging

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

from ssl_dr.models.metrics import confusion_summary
from ssl_dr.run_contract import PR_PLOT, ROC_PLOT, TEST_PREDICTIONS
from ssl_dr.training.curves import pr_figure, referable_curves, roc_figure, write_curves
from ssl_dr.training.wandb_media import per_grade_table


def _predictions(grades: list[int], seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    referable = np.clip(0.35 * (np.asarray(grades) >= 2) + 0.65 * rng.random(len(grades)), 0, 1).round(4)
    return pd.DataFrame({"id_code": [f"img{i}" for i in range(len(grades))], "grade": grades,
                         "pred": grades, "referable": referable})


def test_the_curves_beside_the_run_are_sklearns_points_of_the_predictions_file(tmp_path):
    grades = list(np.random.default_rng(1).integers(0, 5, 80))
    _predictions(grades).to_csv(tmp_path / TEST_PREDICTIONS, index=False)
    written = write_curves(tmp_path)
    assert written == [tmp_path / ROC_PLOT.format(stage="test"), tmp_path / PR_PLOT.format(stage="test")]
    assert [p.name for p in written] == ["roc_test.png", "pr_test.png"]
    for path in written:
        assert cv2.imread(str(path)).shape[2] == 3

    table = pd.read_csv(tmp_path / TEST_PREDICTIONS)
    truth, scores = table.grade >= 2, table.referable
    fpr, tpr, _ = roc_curve(truth, scores)
    precision, recall, _ = precision_recall_curve(truth, scores)
    curves = referable_curves(table)
    assert curves.auroc == pytest.approx(roc_auc_score(truth, scores))
    drawn_roc = roc_figure(curves, "test").axes[0].lines[-1].get_xydata()
    drawn_pr = pr_figure(curves, "test").axes[0].lines[-1].get_xydata()
    np.testing.assert_array_equal(drawn_roc, np.column_stack([fpr, tpr]))
    np.testing.assert_array_equal(drawn_pr, np.column_stack([recall, precision]))


@pytest.mark.parametrize(("grades", "side"), [([0, 1, 0, 1, 0], "non-referable"), ([2, 3, 4, 2], "referable")])
def test_a_fold_on_one_side_of_the_decision_has_no_curve_and_says_so_once(tmp_path, caplog, grades, side):
    _predictions(grades).to_csv(tmp_path / TEST_PREDICTIONS, index=False)
    with caplog.at_level(logging.INFO, logger="ssl_dr"):
        assert write_curves(tmp_path) == []
    assert not list(tmp_path.glob("*.png"))
    (line,) = [r.getMessage() for r in caplog.records if "ROC/PR" in r.getMessage()]
    assert line == (f"no referable ROC/PR curve for test: its {len(grades)} image(s) are all {side} "
                    "(grade >= 2 on one side of the decision only)")


def test_no_predictions_file_no_curve(tmp_path):
    assert write_curves(tmp_path) == [] and write_curves(tmp_path, "external") == []


def test_the_per_grade_table_reads_the_confusion_matrix_as_metrics_json_does():
    confusion = [[5, 1, 0, 0, 0], [2, 3, 1, 0, 0], [0, 1, 4, 0, 1], [0, 0, 0, 0, 0], [0, 0, 1, 0, 2]]
    table = per_grade_table(confusion)
    figures = confusion_summary(np.asarray(confusion))
    assert table.columns == ["grade", "name", "support", "recall", "precision"]
    assert [row[:3] for row in table.data] == [[0, "none", 6], [1, "mild", 6], [2, "moderate", 6], [3, "severe", 0],
                                               [4, "proliferative", 3]]
    for grade, row in enumerate(table.data):
        for value, key in zip(row[3:], ("recall", "precision"), strict=True):
            expected = figures[f"{key}_grade{grade}"]
            assert value == (None if expected != expected else pytest.approx(expected))
    assert table.data[3][3:] == [None, None]  # no grade-3 image, none graded 3: no figure, not 0
