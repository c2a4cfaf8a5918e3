"""benchmarks/quickstart_profile.py's reading of a run: train.log, W&B's debug.log, ``-X importtime`` and the
data/cache files, cut into phases that add up to the wall time. A synthetic run folder, nothing timed."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import quickstart_profile as qp  # noqa: E402

T0 = time.mktime(time.strptime("2026-12-07 15:00:00", "%Y-%m-%d %H:%M:%S"))


def _stamp(seconds: float) -> str:
    """``logging``'s asctime (local time, milliseconds after a comma) ``seconds`` after T0."""
    whole = int(seconds)
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 + whole)) + f",{round((seconds - whole) * 1000):03d}"


def _train_log(lines: list[tuple[float, str, str]]) -> str:
    return "\n".join(f"[{_stamp(t)}][{name}][INFO] - {message}" for t, name, message in lines) + "\n"


TRAIN_LOG = _train_log([
    (2.0, "__main__", "rotation: fraction 1.0, fold 0; outputs in /x"),
    (9.5, "__main__", "split (folds.csv): 320 training / 80 validation / 100 test images"),
    (14.0, "quickstart_profile", "clock RotationPretext fit start"),
    (80.0, "quickstart_profile", "clock RotationPretext fit end train_batches=102 train_s=55.250 val_passes=3 "
                                 "val_s=4.750"),
    (84.0, "ssl_dr.training.phases", "pretext 0123abcd: held-out rotation accuracy 0.800; saved /c/w.pt"),
    (89.0, "quickstart_profile", "clock DRClassifier fit start"),
    (160.0, "quickstart_profile", "clock DRClassifier fit end train_batches=200 train_s=50.000 val_passes=10 "
                                  "val_s=12.000"),
    (160.1, "quickstart_profile", "clock DRClassifier validate start"),
    (161.5, "quickstart_profile", "clock DRClassifier validate end train_batches=0 train_s=0.000 val_passes=1 "
                                  "val_s=1.300"),
    (161.6, "quickstart_profile", "clock DRClassifier test start"),
    (163.5, "quickstart_profile", "clock DRClassifier test end train_batches=0 train_s=0.000 val_passes=0 "
                                  "val_s=0.000"),
    (170.0, "__main__", "tested the checkpoint of step 140 (val/qwk 0.7000): test/qwk 0.6944"),
    (170.5, "__main__", "done: test/qwk = 0.6944  (/x)"),
]).replace("fold 0; outputs in /x\n", "fold 0; outputs in /x\na continuation line without a stamp\n", 1)


def _wandb_log(init: float, ready: float, finish: float) -> str:
    return (f"{_stamp(init)} INFO    MainThread:1 [wandb_setup.py:_flush():81] Current SDK version is 0.31.0\n"
            "config: {'_wandb': {}}\n"
            f"{_stamp(ready)} INFO    MainThread:1 [wandb_init.py:init():1015] run started, returning control to "
            "user process\n"
            f"{_stamp(finish)} INFO    MainThread:1 [wandb_run.py:_finish():2300] finishing run ssl_dr/x\n")


def _run_folder(root: Path) -> Path:
    run = root / "outputs" / "rotation" / "runs" / "stamp"
    run.mkdir(parents=True)
    (run / "train.log").write_text(TRAIN_LOG)
    for name, marks in (("offline-run-1-pretext-0123abcd", (11.0, 13.5, 81.0)),
                        ("offline-run-2-rotation-5678", (86.0, 88.0, 166.0))):
        logs = run / "wandb" / name / "logs"
        logs.mkdir(parents=True)
        (logs / "debug.log").write_text(_wandb_log(*marks))
    for path, when in ((root / "data" / "synthetic" / "generator.json", 7.0),
                       (root / "cache" / "images" / "abc" / "index.json", 10.5)):
        path.parent.mkdir(parents=True)
        path.write_text("{}")
        os.utime(path, (T0 + when, T0 + when))
    return run


def test_the_phases_of_a_run_add_up_to_its_wall_time(tmp_path):
    run = _run_folder(tmp_path)
    marks, fits = qp.run_marks(run, tmp_path / "data", tmp_path / "cache")
    marks.update(start=T0, end=T0 + 171.0)
    rows = dict(qp.profile_rows(marks, fits))
    assert rows["interpreter, imports, Hydra config, checks"] == pytest.approx(2.0)
    assert rows["synthetic data generation"] == pytest.approx(5.0)
    assert rows["read records, folds, split"] == pytest.approx(2.5)
    assert rows["image cache build"] == pytest.approx(1.0)
    assert rows["pretext: W&B init"] == pytest.approx(2.5)
    assert rows["pretext: fit"] == pytest.approx(66.0)
    assert rows["  of which 102 training steps"] == pytest.approx(55.25)
    assert rows["  of which 3 validations"] == pytest.approx(4.75)
    assert rows["pretext: W&B media (example grid)"] == pytest.approx(1.0)
    assert rows["fine-tune: fit"] == pytest.approx(71.0)
    assert rows["  of which 10 validations"] == pytest.approx(12.0)
    assert rows["  of which the rest (loading, checkpoints, logging)"] == pytest.approx(9.0)
    assert rows["extra validation pass (tested checkpoint)"] == pytest.approx(1.5)
    assert rows["test (and test_predictions.csv)"] == pytest.approx(2.0)
    assert rows["W&B confusion plots, summary, predictions table + Grad-CAM"] == pytest.approx(2.5)
    assert rows["fine-tune: W&B finish"] == pytest.approx(4.0)
    assert rows["interpreter exit"] == pytest.approx(0.5)
    top_level = [s for name, s in qp.profile_rows(marks, fits) if not name.startswith("  ")]
    assert sum(top_level) == pytest.approx(171.0)


def test_a_run_without_wandb_joins_the_rows_around_the_missing_marks(tmp_path):
    """logger=csv: no debug.log, so the time from the cache to the pretext's fit is one row, named for both."""
    run = _run_folder(tmp_path)
    for debug_log in run.glob("wandb/*/logs/debug.log"):
        debug_log.unlink()
    marks, fits = qp.run_marks(run, tmp_path / "data", tmp_path / "cache")
    marks.update(start=T0, end=T0 + 171.0)
    rows = dict(qp.profile_rows(marks, fits))
    assert rows["pretext: model, store key + pretext: W&B init + pretext: Trainer setup"] == pytest.approx(3.5)
    assert sum(s for name, s in rows.items() if not name.startswith("  ")) == pytest.approx(171.0)


def test_import_times_add_up_each_packages_own_time_wherever_it_was_imported():
    """Self times, not cumulative ones: torchvision imported by torchmetrics is torchvision's, not torchmetrics'."""
    stderr = ("import time: self [us] | cumulative | imported package\n"
              "import time:    100000 |     100000 |     torch._C\n"
              "import time:   2000000 |    2100000 |   torch.nn\n"
              "import time:    500000 |    2600000 | torch\n"
              "import time:    700000 |     700000 |   torchvision\n"
              "import time:    250000 |     950000 | torchmetrics\n"
              "Seed set to 42\n")
    total, packages = qp.import_times(stderr)
    assert total == pytest.approx(3.55)
    assert packages == [("torch", pytest.approx(2.6)), ("torchvision", pytest.approx(0.7)),
                        ("torchmetrics", pytest.approx(0.25))]


def test_the_table_gives_each_phase_its_share_of_the_wall_time():
    text = qp.table([("a", 30.0), ("  of which b", 10.0), ("c", 70.0)], 100.0, (2.5, [("torch", 2.0)]))
    assert "| a | 30.0 | 30.0 |" in text
    assert "|   of which b | 10.0 | 10.0 |" in text
    assert "| **total (wall)** | **100.0** | 100 |" in text
    assert "imports, whole process (`-X importtime`, all phases): 2.5 s; by package: torch 2.0" in text
