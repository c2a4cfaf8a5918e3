"""The frozen-feature protocols through ``python -m ssl_dr.train`` (``protocol=linear|knn``, ``arm=classical``): the
fine-tune's files and keys, features stored once and reused across protocols and fractions, the external set graded
by the same probe, and the classical arm refused where it cannot run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.errors import ConfigError
from ssl_dr.train import train
from tests.conftest import REPO, TINY, compose_cfg

GRADES = list(range(NUM_GRADES))
PROBS = [f"p{g}" for g in GRADES]


def _qwk_auroc(table: pd.DataFrame) -> tuple[float, float]:
    """QWK of the argmax grade and AUROC of P(grade >= 2), as scikit-learn computes them from a predictions file."""
    grades = table.grade.to_numpy()
    qwk = cohen_kappa_score(grades, table[PROBS].to_numpy().argmax(axis=1), weights="quadratic", labels=GRADES)
    return qwk, roc_auc_score(grades >= 2, table[["p2", "p3", "p4"]].sum(axis=1))


def test_classical_linear_probe_job_leaves_the_fine_tunes_files_and_scores(tmp_path):
    metrics = train(compose_cfg(tmp_path, [*TINY, "arm=classical", "protocol=linear"]))
    out = Path(metrics["output_dir"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["arm"] == "classical" and saved["protocol"] == "linear" and saved["init"] == "none"
    assert (out / "split.csv").is_file() and (out / "environment.json").is_file()
    assert not (out / "checkpoints").exists()  # nothing trained by gradient: no checkpoint
    table = pd.read_csv(out / "test_predictions.csv")
    assert len(table) == saved["num_test"] and list(table.columns) == ["id_code", "grade", "pred", "referable", *PROBS]
    qwk, auroc = _qwk_auroc(table)
    assert saved["test/qwk"] == pytest.approx(qwk, abs=1e-9)
    assert saved["test/auroc_referable"] == pytest.approx(auroc, abs=1e-6)  # torchmetrics: float32
    assert saved["val/qwk_best"] == saved["val/qwk"]  # C chosen on validation: the chosen value is reported
    assert saved["probe/C"] in saved["probe/val_qwk_by_C"] or f"{saved['probe/C']:g}" in saved["probe/val_qwk_by_C"]


def test_classical_arm_has_no_fine_tune(tmp_path):
    with pytest.raises(ConfigError, match="protocol=linear or protocol=knn"):
        train(compose_cfg(tmp_path, [*TINY, "arm=classical"]))


def test_unknown_protocol_is_one_line_on_the_command_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "ssl_dr.train", "arm=classical", "protocol=finetune",
                           "protocol.name=svm", f"paths.root_dir={tmp_path}", "logger=csv"],
                          cwd=tmp_path, capture_output=True, text=True, env={"PYTHONPATH": str(REPO),
                                                                              "PATH": "/usr/bin:/bin"})
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.strip().splitlines()[-1] == ("error: protocol='svm' is not one of finetune, linear, knn")


@pytest.mark.e2e
def test_features_are_extracted_once_for_every_protocol_and_fraction(tmp_path):
    first = train(compose_cfg(tmp_path, [*TINY, "arm=baseline", "protocol=knn"], run="knn"))
    second = train(compose_cfg(tmp_path, [*TINY, "arm=baseline", "protocol=linear", "data.label_fraction=0.5"],
                               run="linear"))
    assert first["probe/features"] == second["probe/features"]
    assert len(list((tmp_path / "cache" / "features").glob("*/features.npy"))) == 1
    other_seed = train(compose_cfg(tmp_path, [*TINY, "arm=baseline", "protocol=knn", "seed=43"], run="seed43"))
    assert other_seed["probe/features"] != first["probe/features"]  # a random init's features follow its seed
    assert first["probe/k"] == 20 and first["probe/temperature"] == 0.07


@pytest.mark.e2e
def test_rotation_probe_reads_its_pretext_and_grades_the_external_set(tmp_path):
    metrics = train(compose_cfg(tmp_path, [*TINY, "arm=rotation", "protocol=linear", "test_data=synthetic",
                                           "test_data.source.num_labelled=40", "test_data.source.image_size=32"]))
    out = Path(metrics["output_dir"])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["init/weights"] and Path(saved["init/weights"]).is_file() and saved["pretext/key"]
    table = pd.read_csv(out / "external_predictions.csv")
    assert len(table) == saved["external/num_images"] == 40
    qwk, auroc = _qwk_auroc(table)
    assert saved["external/qwk"] == pytest.approx(qwk, abs=1e-9)
    assert saved["external/auroc_referable"] == pytest.approx(auroc, abs=1e-6)
    assert np.allclose(table[PROBS].sum(axis=1), 1.0)
    assert saved["external/root"].endswith("synthetic-n40-u0-px32-seed1")
