"""Grading the external set (``ssl_dr.training.external``): the test fold's figures, under ``external/``, from the
checkpoint chosen on validation, equal to scikit-learn's on ``external_predictions.csv``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import (
    accuracy_score,
    cohen_kappa_score,
    confusion_matrix,
    precision_score,
    recall_score,
    roc_auc_score,
)

from ssl_dr.data.cache import build_cache
from ssl_dr.data.csv_source import CsvSource
from ssl_dr.data.external import ExternalSet
from ssl_dr.data.records import NUM_GRADES
from ssl_dr.data.synthetic import write_synthetic_dataset
from ssl_dr.models.heads import build_head
from ssl_dr.models.screening import at_threshold
from ssl_dr.run_contract import EXTERNAL_PREDICTIONS, TEST_PREDICTIONS
from ssl_dr.train import train
from ssl_dr.training.external import external_scores, grade_external
from tests.conftest import TINY, compose_cfg

GRADES = list(range(NUM_GRADES))


def sklearn_scores(grades: np.ndarray, preds: np.ndarray, referable_score: np.ndarray) -> dict[str, object]:
    """The external figures as scikit-learn defines them."""
    return {"qwk": cohen_kappa_score(grades, preds, weights="quadratic", labels=GRADES),
            "acc": accuracy_score(grades, preds),
            "auroc_referable": roc_auc_score(grades >= 2, referable_score),
            "confusion": confusion_matrix(grades, preds, labels=GRADES).tolist(),
            "recall": recall_score(grades, preds, labels=GRADES, average=None, zero_division=np.nan),
            "precision": precision_score(grades, preds, labels=GRADES, average=None, zero_division=np.nan)}


@pytest.mark.parametrize("head", ["classification", "ordinal", "regression"])
def test_external_scores_are_scikit_learns(head):
    grading = build_head(head)
    generator = torch.Generator().manual_seed(3)
    outputs = torch.randn(80, grading.num_outputs, generator=generator)
    grades = torch.randint(0, NUM_GRADES, (80,), generator=generator)
    activated = grading.activate(outputs)
    scores = external_scores(grading, activated, grades)
    expected = sklearn_scores(grades.numpy(), grading.decode(activated).numpy(), grading.referable(activated).numpy())
    assert scores["external/qwk"] == pytest.approx(expected["qwk"], abs=1e-6)
    assert scores["external/acc"] == pytest.approx(expected["acc"])
    assert scores["external/auroc_referable"] == pytest.approx(expected["auroc_referable"], abs=1e-6)
    assert scores["external/confusion"] == expected["confusion"]
    for g in GRADES:
        assert scores[f"external/recall_grade{g}"] == pytest.approx(expected["recall"][g], nan_ok=True)
        assert scores[f"external/precision_grade{g}"] == pytest.approx(expected["precision"][g], nan_ok=True)
    assert scores["external/num_images"] == 80
    assert scores["external/grades_predicted"] == len(set(grading.decode(activated).tolist()))


def test_no_external_set_or_no_chosen_checkpoint_grades_nothing(tmp_path, caplog):
    cfg = compose_cfg(tmp_path, TINY)
    assert grade_external(cfg, None, tmp_path / "best.ckpt", tmp_path) == {}  # test_data=none
    folder = write_synthetic_dataset(tmp_path / "set", num_labelled=3, num_unlabelled=0, image_size=32)
    records = CsvSource(folder).load()
    external = ExternalSet(records, build_cache(records, tmp_path / "cache", 32, False, 0), folder)
    with caplog.at_level(logging.INFO):  # debug=fdr writes no checkpoint: said, not a crash
        assert grade_external(cfg, external, tmp_path / "best.ckpt", tmp_path) == {}
    assert "trainer.fast_dev_run writes none" in caplog.text
    assert not (tmp_path / EXTERNAL_PREDICTIONS).exists()


@pytest.fixture(scope="module")
def external_run(tmp_path_factory):
    """One tiny baseline job with a second synthetic set (seed 1) as the external validation set."""
    root = tmp_path_factory.mktemp("external")
    cfg = compose_cfg(root, [*TINY, "experiment=baseline", "test_data=synthetic", "test_data.source.num_labelled=40",
                             "test_data.source.image_size=32"])
    metrics = train(cfg)
    return cfg, metrics, Path(metrics["output_dir"])


@pytest.mark.e2e
def test_job_writes_external_scores_equal_to_scikit_learn_on_its_predictions(external_run):
    _, metrics, out = external_run
    saved = json.loads((out / "metrics.json").read_text())
    table = pd.read_csv(out / EXTERNAL_PREDICTIONS)
    assert list(table.columns) == list(pd.read_csv(out / TEST_PREDICTIONS).columns)  # id_code,grade,pred,p0..p4
    assert len(table) == saved["external/num_images"] == 40 and table.id_code.is_unique
    grades, preds = table.grade.to_numpy(), table.pred.to_numpy()
    expected = sklearn_scores(grades, preds, table[["p2", "p3", "p4"]].sum(axis=1).to_numpy())
    assert saved["external/qwk"] == pytest.approx(expected["qwk"], abs=1e-6)
    assert saved["external/auroc_referable"] == pytest.approx(expected["auroc_referable"], abs=1e-5)
    assert saved["external/acc"] == pytest.approx(expected["acc"])
    assert saved["external/confusion"] == expected["confusion"]
    assert saved["external/root"].endswith("synthetic-n40-u0-px32-seed1")
    assert {k: v for k, v in metrics.items() if k.startswith("external/")}.keys() == \
        {k for k in saved if k.startswith("external/")}
    # the operating point chosen on validation, read on the external set (ssl_dr.training.screening)
    figures = at_threshold(grades, table.referable, saved["operating_point/threshold"])
    assert saved["external/sensitivity_at_operating_point"] == pytest.approx(figures["sensitivity"], nan_ok=True)
    assert saved["external/specificity_at_operating_point"] == pytest.approx(figures["specificity"], nan_ok=True)
    assert {"external/ece", "external/qwk_ci_low", "external/auroc_referable_ci_high"} <= saved.keys()
    assert {"test/ece", "test/qwk_ci_low", "test/sensitivity_at_operating_point"} <= saved.keys()  # from the fine-tune


@pytest.mark.e2e
def test_the_external_path_on_the_test_fold_gives_the_test_scores(external_run, tmp_path):
    """Graded as an external set, the job's own test fold gives its test/* figures and test_predictions.csv: the
    external figures are the test fold's, by the same definitions and the same chosen checkpoint."""
    cfg, metrics, out = external_run
    split = pd.read_csv(out / "split.csv", dtype={"id_code": str})
    test_ids = set(split.loc[split.role == "test", "id_code"])
    test = sorted((r for r in CsvSource(cfg.data.root).load() if r.id_code in test_ids), key=lambda r: r.id_code)
    cache = build_cache(test, tmp_path / "cache", cfg.data.image_size, cfg.data.preprocess.ben_graham, 0,
                        cfg.data.preprocess.mask)
    scores = grade_external(cfg, ExternalSet(test, cache, Path(cfg.data.root)), out / "checkpoints" / "best.ckpt",
                            tmp_path)
    for name in ("qwk", "acc", "auroc_referable", "qwk_kaggle", "sensitivity_referable", "specificity_referable"):
        assert scores[f"external/{name}"] == pytest.approx(metrics[f"test/{name}"], abs=1e-5, nan_ok=True), name
    assert scores["external/confusion"] == metrics["test/confusion"]
    tested = pd.read_csv(out / TEST_PREDICTIONS).sort_values("id_code").reset_index(drop=True)
    graded = pd.read_csv(tmp_path / EXTERNAL_PREDICTIONS)
    assert graded[["id_code", "grade", "pred"]].equals(tested[["id_code", "grade", "pred"]])
    probs = [f"p{g}" for g in GRADES]
    assert np.allclose(graded[probs], tested[probs], atol=1e-5)
