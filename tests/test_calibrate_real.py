"""benchmarks/calibrate_real.py: the scratch baseline's calibration on real photographs reads validation only,
writes one result per setting and skips finished ones. Run here on a tiny folder in eyepacs-dev's layout
(labels.csv with a patient column + images/) written from the built-in generator: the real set is never needed."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import write_two_eye_photos

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "calibrate_real.py"
TINY = ("--override", "data.image_size=32", "--override", "trainer.max_steps=4", "--override",
        "trainer.val_check_interval=2", "--override", "model.classifier.scheduler.warmup_steps=1", "--override",
        "model.classifier.freeze_steps=1")


def _script():
    spec = importlib.util.spec_from_file_location("calibrate_real", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _patient_folder(root: Path, patients: int = 25) -> Path:
    rows = write_two_eye_photos(root / "images", patients, seed=5)
    with open(root / "labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("id_code", "diagnosis", "patient_id", "eye"), *rows])
    return root


def test_settings_are_listed_and_unknown_ones_or_a_wrong_folder_are_refused(tmp_path, capsys):
    script = _script()
    script.main([str(tmp_path), "--out", str(tmp_path / "out"), "--list"])
    listed = capsys.readouterr().out
    assert all(name in listed for name in script.SETTINGS)
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), "nope", "--out", str(tmp_path / "out")])
    assert "unknown setting(s) ['nope']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.main([str(tmp_path), "reg128", "--out", str(tmp_path / "out")])
    assert "labels.csv not found" in capsys.readouterr().err
    for _, overrides in script.SETTINGS.values():  # one step budget per setting, validated at its last step
        steps = int(next(o for o in overrides if o.startswith("trainer.max_steps=")).split("=")[1])
        assert steps % 50 == 0


@pytest.mark.e2e
def test_one_setting_writes_its_validation_curve_and_a_rerun_skips_it(tmp_path):
    root = _patient_folder(tmp_path / "photos")
    out = tmp_path / "calibration"
    command = [sys.executable, str(SCRIPT), str(root), "reg128", "--out", str(out), *TINY,
               "--override", "model.backbone.name=resnet10t"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    result = json.loads((out / "reg128" / "result.json").read_text())
    assert result["steps"] == 4 and len(result["val_qwk_curve"]) == 2  # validated at steps 2 and 4
    assert len(result["val_auroc_curve"]) == 2
    assert result["best_val_qwk"] == pytest.approx(max(result["val_qwk_curve"]), abs=1e-3)
    assert not any(key.startswith("test") for key in result)  # chosen on validation only
    assert "| reg128 | 4 |" in first.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and "[calibrate] reg128:" not in again.stdout  # finished: not trained again
    assert "| reg128 | 4 |" in again.stdout
