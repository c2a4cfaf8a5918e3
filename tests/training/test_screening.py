"""A job's operating point, calibration and bootstrap intervals (``ssl_dr.training.screening``): fitted on the
validation predictions only, read on the test fold, written to metrics.json and stored in the chosen checkpoint."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf
from scipy.special import softmax
from sklearn.metrics import cohen_kappa_score

from ssl_dr.errors import ConfigError
from ssl_dr.models.screening import at_threshold, calibration_errors, choose_threshold, nll, temper
from ssl_dr.run_contract import CHECKPOINT_SCREENING
from ssl_dr.train import train
from ssl_dr.training.screening import check_evaluation, screen
from tests.conftest import TINY, compose_cfg

PROBS = [f"p{k}" for k in range(5)]


def settings(**changes) -> OmegaConf:
    base = {"referable_target": {"sensitivity": 0.9, "specificity": None}, "calibration_bins": 10,
            "temperature_scaling": False, "bootstrap": {"resamples": 200, "level": 0.95, "seed": 3}}
    return OmegaConf.create({**base, **changes})


def prediction_file(path: Path, grades: np.ndarray, logits: np.ndarray) -> pd.DataFrame:
    probs = softmax(logits, axis=1)
    table = pd.DataFrame({"id_code": [f"{path.stem}{i}" for i in range(len(grades))], "grade": grades,
                          "pred": probs.argmax(axis=1), "referable": probs[:, 2:].sum(axis=1),
                          **{p: probs[:, k] for k, p in enumerate(PROBS)}})
    table.to_csv(path, index=False)
    return table


def slices(tmp_path: Path, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    made = []
    for name, n in (("val", 80), ("test", 120)):
        grades = rng.integers(0, 5, n)
        logits = rng.normal(size=(n, 5)) * 3
        logits[np.arange(n), grades] += 2.5  # informative, over-confident
        made.append(prediction_file(tmp_path / f"{name}_predictions.csv", grades, logits))
    return made[0], made[1]


def test_the_threshold_is_chosen_on_validation_and_read_on_test(tmp_path):
    val, test = slices(tmp_path)
    record = screen(settings(), tmp_path, {})
    threshold = choose_threshold(val.grade, val.referable, "sensitivity", 0.9)
    assert record["operating_point/threshold"] == threshold
    assert record["operating_point/sensitivity_target"] == 0.9
    assert record["val/sensitivity_at_operating_point"] >= 0.9
    expected = at_threshold(test.grade, test.referable, threshold)
    assert record["test/sensitivity_at_operating_point"] == expected["sensitivity"]
    assert record["test/specificity_at_operating_point"] == expected["specificity"]
    assert record["test/ece"] == pytest.approx(calibration_errors(test.grade, test[PROBS].to_numpy(), 10)["ece"])
    assert record["test/qwk_ci_low"] < cohen_kappa_score(test.grade, test.pred, weights="quadratic") \
        < record["test/qwk_ci_high"]
    for picture in ("reliability_test.png", "roc_test.png", "pr_test.png"):
        assert (tmp_path / picture).stat().st_size > 0


def test_only_the_stages_asked_for_are_read_so_a_fine_tune_adds_its_external_figures_alone(tmp_path):
    slices(tmp_path)
    rng = np.random.default_rng(5)
    prediction_file(tmp_path / "external_predictions.csv", rng.integers(0, 5, 60), rng.normal(size=(60, 5)))
    both = screen(settings(), tmp_path, {})
    external_only = screen(settings(), tmp_path, {}, stages=("external",))
    assert not any(key.startswith("test/") for key in external_only)
    assert {k: v for k, v in both.items() if not k.startswith("test/")} == external_only
    assert "external/qwk_ci_low" in external_only


def test_changing_the_test_labels_cannot_move_the_threshold(tmp_path):
    val, test = slices(tmp_path)
    before = screen(settings(), tmp_path, {})
    test.assign(grade=(test.grade + 2) % 5).to_csv(tmp_path / "test_predictions.csv", index=False)
    after = screen(settings(), tmp_path, {})
    assert after["operating_point/threshold"] == before["operating_point/threshold"]
    assert after["val/specificity_at_operating_point"] == before["val/specificity_at_operating_point"]
    assert after["test/specificity_at_operating_point"] != before["test/specificity_at_operating_point"]
    val.assign(grade=(val.grade + 2) % 5).to_csv(tmp_path / "val_predictions.csv", index=False)
    assert screen(settings(), tmp_path, {})["operating_point/threshold"] != before["operating_point/threshold"]


def test_temperature_scaling_is_fitted_on_validation_and_stored_in_the_checkpoint(tmp_path):
    val, test = slices(tmp_path)
    ckpt = tmp_path / "checkpoints" / "best.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(2)}}, ckpt)
    record = screen(settings(temperature_scaling=True), tmp_path, {})
    temperature = record["calibration/temperature"]
    assert temperature > 1 and record["val/nll_after_temperature"] < record["val/nll_before_temperature"]
    assert record["val/nll_before_temperature"] == pytest.approx(nll(val.grade.to_numpy(), val[PROBS].to_numpy()))
    assert record["test/ece"] != record["test/ece_before_temperature"]
    tempered = temper(test[PROBS].to_numpy(), temperature)
    assert (tempered.argmax(axis=1) == test.pred).all()  # no grade moves
    assert record["test/ece"] == pytest.approx(calibration_errors(test.grade, tempered, 10)["ece"])
    stored = torch.load(ckpt, weights_only=True)
    assert stored[CHECKPOINT_SCREENING] == {"temperature": temperature, "referable_threshold":
                                      record["operating_point/threshold"], "referable_target": {"sensitivity": 0.9}}
    assert torch.equal(stored["state_dict"]["w"], torch.ones(2))  # the weights are untouched


def test_a_one_sided_validation_slice_gives_nan_figures(tmp_path):
    val, _ = slices(tmp_path)
    val.assign(grade=0).to_csv(tmp_path / "val_predictions.csv", index=False)
    record = screen(settings(), tmp_path, {})
    assert math.isnan(record["operating_point/threshold"])
    assert math.isnan(record["test/sensitivity_at_operating_point"])


def test_the_bootstrap_resamples_patients_given(tmp_path):
    slices(tmp_path)
    by_image = screen(settings(), tmp_path, {})
    pairs = {"test": {f"test_predictions{i}": f"patient{i // 2}" for i in range(120)}}
    by_patient = screen(settings(), tmp_path, pairs)
    assert by_patient["test/qwk_ci_low"] != by_image["test/qwk_ci_low"]


def test_a_specificity_target_and_no_target(tmp_path):
    val, _ = slices(tmp_path)
    record = screen(settings(referable_target={"sensitivity": None, "specificity": 0.8}), tmp_path, {})
    assert record["operating_point/specificity_target"] == 0.8 and record["val/specificity_at_operating_point"] >= 0.8
    assert record["operating_point/threshold"] == choose_threshold(val.grade, val.referable, "specificity", 0.8)
    none = screen(settings(referable_target={"sensitivity": None, "specificity": None}), tmp_path, {})
    assert not any(key.startswith("operating_point/") or "operating_point" in key for key in none)


def test_without_prediction_files_there_is_nothing_to_screen(tmp_path):
    assert screen(settings(), tmp_path, {}) == {}


@pytest.mark.parametrize(("override", "field"), [
    ("evaluation.referable_target.specificity=0.8", "evaluation.referable_target"),  # sensitivity not set to null
    ("evaluation.calibration_bins=0", "evaluation.calibration_bins"),
    ("evaluation.bootstrap.level=95", "evaluation.bootstrap.level"),
    ("evaluation.temperature_scaling=true model.head=regression", "evaluation.temperature_scaling"),
])
def test_bad_evaluation_settings_are_refused_before_training(tmp_path, override, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        check_evaluation(compose_cfg(tmp_path, [*TINY, *override.split()]))


def test_a_probe_job_writes_the_figures_of_its_own_prediction_files(tmp_path):
    metrics = train(compose_cfg(tmp_path, [*TINY, "arm=classical", "protocol=linear"]))
    out = Path(metrics["output_dir"])
    saved = json.loads((out / "metrics.json").read_text())
    val, test = pd.read_csv(out / "val_predictions.csv"), pd.read_csv(out / "test_predictions.csv")
    assert len(val) == saved["num_val"] and len(test) == saved["num_test"]
    threshold = choose_threshold(val.grade, val.referable, "sensitivity", 0.9)
    assert saved["operating_point/threshold"] == pytest.approx(threshold) or math.isnan(threshold)
    assert saved["test/ece"] == pytest.approx(calibration_errors(test.grade, test[PROBS].to_numpy(), 15)["ece"])
    assert {"test/qwk_ci_low", "test/qwk_ci_high", "test/auroc_referable_ci_low"} <= saved.keys()


def test_a_fine_tune_stores_its_operating_point_and_validation_predictions(tmp_path):
    metrics = train(compose_cfg(tmp_path, [*TINY, "arm=baseline", "evaluation.temperature_scaling=true"]))
    out = Path(metrics["output_dir"])
    val = pd.read_csv(out / "val_predictions.csv")
    # the chosen checkpoint's validation pass: its QWK is the reported one
    qwk = cohen_kappa_score(val.grade, val.pred, weights="quadratic", labels=list(range(5)))
    assert metrics["val/qwk"] == pytest.approx(qwk, abs=1e-6) or (math.isnan(qwk) and math.isnan(metrics["val/qwk"]))
    stored = torch.load(out / "checkpoints" / "best.ckpt", weights_only=True, map_location="cpu")[CHECKPOINT_SCREENING]
    assert stored["temperature"] == metrics["calibration/temperature"]
    assert stored["referable_threshold"] == metrics["operating_point/threshold"] or math.isnan(
        metrics["operating_point/threshold"])
