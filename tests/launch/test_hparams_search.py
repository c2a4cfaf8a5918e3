"""``hparams_search=finetune_optuna``: Optuna over the fine-tune's hyper-parameters, scored on validation only,
its study kept so the same command continues it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ssl_dr.launch.objective import ObjectiveError, check_objective
from tests.conftest import TINY, compose_cfg

OPTUNA = "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
# the tiny budget (4 steps) cannot hold the preset's 20-50 freeze/warm-up steps: search smaller ones
SEARCHED = ("model.classifier.freeze_steps=", "model.classifier.scheduler.warmup_steps=")
SEARCH = ["experiment=rotation", "hparams_search=finetune_optuna", *(o for o in TINY if not o.startswith(SEARCHED)),
          "model.classifier.freeze_steps=choice(0,2)", "model.classifier.scheduler.warmup_steps=choice(0,1)"]


def _search(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_dr.train", *SEARCH, *overrides], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize(("metric", "resume", "message"), [
    ("test/qwk", None, "is the test fold"),
    ("train/loss", None, "is not a validation metric"),
    ("val/qwk_best", "last", "continues the study"),
])
def test_a_search_may_only_optimise_validation(metric, resume, message):
    with pytest.raises(ObjectiveError, match=message):
        check_objective(metric, resume, OPTUNA, multirun=True)
    check_objective(metric, resume, "hydra._internal.core_plugins.basic_sweeper.BasicSweeper", multirun=True)
    check_objective(metric, resume, OPTUNA, multirun=False)


def test_the_preset_optimises_validation_and_keeps_its_study(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    cfg = compose_cfg(tmp_path, ["experiment=rotation", "hparams_search=finetune_optuna"])
    assert cfg.optimized_metric == "val/qwk_best"
    assert compose_cfg(tmp_path, ["experiment=rotation"]).optimized_metric == "val/qwk_best"  # the default too


@pytest.mark.e2e
def test_a_test_objective_is_refused_before_any_trial(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    result = _search(tmp_path, "optimized_metric=test/qwk")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: optimized_metric=test/qwk is the test fold")
    assert not (tmp_path / "outputs").exists()  # no study, no trial, no job folder


@pytest.mark.slow
def test_search_prints_and_writes_the_best_parameters_and_continues_its_study(tmp_path):
    optuna = pytest.importorskip("optuna")
    first = _search(tmp_path, "hydra.sweeper.n_trials=3")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "Best parameters:" in first.stdout + first.stderr
    (results,) = tmp_path.glob("outputs/hparams_rotation/multiruns/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    assert set(best["best_params"]) == {"model.classifier.optimizer.lr", "model.classifier.optimizer.weight_decay",
                                        "model.classifier.scheduler.warmup_steps", "model.classifier.freeze_steps"}
    assert 0 <= best["best_value"] <= 1
    again = _search(tmp_path, "hydra.sweeper.n_trials=1")
    assert again.returncode == 0, again.stderr[-3000:]
    storage = f"sqlite:///{tmp_path / 'outputs' / 'hparams_rotation' / 'optuna.db'}"
    study = optuna.load_study(study_name="finetune_rotation_frac1.0_fold0", storage=storage)
    assert len(study.trials) == 4  # the same command continued the stored study
    jobs = list(tmp_path.glob("outputs/hparams_rotation/multiruns/*/*/metrics.json"))
    assert len(jobs) == 4 and not list(tmp_path.glob("outputs/hparams_rotation/multiruns/*/report.md"))
