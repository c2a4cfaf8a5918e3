"""experiment=real_cpu: rotation vs scratch on real photographs sized for the CPU (issue 20).

Composition checks (nothing trained) and one end-to-end sweep on a tiny Kaggle-EyePACS-layout folder written
from the built-in generator's images: the preset must run on another layout by changing only ``data=`` and
``data.root=``. The real photographs it was calibrated on (eyepacs-dev) are never needed here.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import TINY_TRAINING, write_two_eye_photos
from tests.test_paper_preset import _compose, _run_settings

DATA_KEYS = ("source", "root")
"""The only data settings a layout may change."""


def _without_layout(settings: dict) -> dict:
    settings = dict(settings)
    settings["data"] = {k: v for k, v in settings["data"].items() if k not in DATA_KEYS}
    return settings


def test_real_cpu_defaults_to_a_patient_csv_folder_with_grouped_folds():
    cfg = _compose("experiment=real_cpu", "data.root=/nonexistent/eyepacs-dev", hydra=True)
    source = cfg.data.source
    assert (source.csv, source.image_dir, source.id_column, source.label_column, source.group_column) == \
        ("labels.csv", "images", "id_code", "diagnosis", "patient_id")
    assert source.root == "/nonexistent/eyepacs-dev"
    assert cfg.data.val_protocol == "within_fraction"
    assert cfg.data.preprocess.mask == "rotation_invariant"
    assert cfg.trainer.accelerator == "cpu" and cfg.trainer.max_epochs is None
    assert cfg.model.classifier.scheduler.total_steps == cfg.trainer.max_steps
    assert cfg.trainer.max_steps % cfg.trainer.val_check_interval == 0  # the last step is validated
    params = cfg.hydra.sweeper.params
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.sweep_name == "real_cpu"
    assert list(cfg.arms) == ["rotation", "baseline"]
    assert {"0.1", "1.0"} <= set(params["data.label_fraction"].split(","))
    assert params["data.fold"] == "0,1,2,3,4"


def test_real_cpu_runs_the_same_settings_on_an_eyepacs_layout():
    """``data=eyepacs data.root=...`` changes where and how the labels are read, nothing else."""
    for arm in ("rotation", "baseline"):
        default = _run_settings(_compose("experiment=real_cpu", "data.root=/a", f"arm={arm}"))
        eyepacs = _compose("experiment=real_cpu", "data=eyepacs", "data.root=/b", f"arm={arm}")
        assert eyepacs.data.source.csv == "trainLabels.csv" and eyepacs.data.source.group_pattern
        assert _without_layout(_run_settings(eyepacs)) == _without_layout(default)


def fine_tune_settings(experiment: str, *overrides: str) -> tuple:
    """What shapes a job's fine-tune (trainer, grader, preprocessing, size, batch, validation rule), after the
    budget checks a run makes before training."""
    from ssl_dr.training import budget

    cfg = _compose(f"experiment={experiment}", "data.root=/nonexistent", *overrides)
    budget.check_budget(cfg)
    return (OmegaConf.to_container(cfg.trainer), OmegaConf.to_container(cfg.model.classifier),
            OmegaConf.to_container(cfg.data.preprocess), cfg.data.image_size, cfg.data.batch_size,
            cfg.data.val_protocol, cfg.data.val_fraction)


def test_real_cpu_gives_every_arm_and_fraction_the_same_fine_tune_and_passes_the_budget_checks():
    reference = fine_tune_settings("real_cpu", "arm=rotation", "data.label_fraction=1.0")
    for arm in ("rotation", "baseline"):
        for fraction in ("0.05", "0.1", "0.25", "0.5", "1.0"):
            assert fine_tune_settings("real_cpu", f"arm={arm}", f"data.label_fraction={fraction}") == reference


def _eyepacs_layout(root: Path, patients: int = 30) -> Path:
    """A tiny Kaggle EyePACS folder: trainLabels.csv (image, level) + train/<patient>_<eye>.jpeg."""
    rows = write_two_eye_photos(root / "train", patients, seed=3, first_patient=100)
    with open(root / "trainLabels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("image", "level"), *((name, grade) for name, grade, _, _ in rows)])
    return root


@pytest.mark.e2e
def test_real_cpu_sweep_runs_unchanged_on_an_eyepacs_layout_folder(tmp_path):
    root = _eyepacs_layout(tmp_path / "eyepacs")
    command = [sys.executable, "-m", "ssl_dr.train", "experiment=real_cpu", "data=eyepacs", f"data.root={root}",
               "data.fold=0", "data.label_fraction=1.0", *TINY_TRAINING]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "real_cpu" / "multiruns").iterdir()
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert sorted(j["arm"] for j in jobs) == ["baseline", "rotation"]
    assert {j["labels/available"] for j in jobs} == {48}  # the 4 training folds of 60 photographs
    for job in jobs:
        assert "test/auroc_referable" in job and "test/qwk" in job
        with open(Path(job["output_dir"]) / "split.csv") as f:
            roles: dict[str, set[str]] = {}
            for row in csv.DictReader(f):
                roles.setdefault(row["id_code"].rsplit("_", 1)[0], set()).add(row["role"])
        assert all(len(r) == 1 for r in roles.values())  # both eyes of a patient in one role
    assert (sweep / "report.md").is_file()
