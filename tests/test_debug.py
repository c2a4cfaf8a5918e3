"""``debug=`` configs (as in the Lightning-Hydra template) and ``trainer.fast_dev_run=true`` run end to end, for
every experiment, and a debug run's pretext is never reused by a real run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from ssl_dr.config_dir import pretext_arms
from ssl_dr.train import CONFIG_DIR
from tests.conftest import TINY_SYNTHETIC

pytestmark = pytest.mark.e2e  # end to end: the `e2e` tier (.ci/run), not the default run

EXPERIMENTS = sorted({p.stem for p in (Path(CONFIG_DIR) / "experiment").glob("*.yaml")} | set(pretext_arms()))
"""The files of conf/experiment/ and the experiments derived from conf/pretext/ (ssl_dr.config_dir)."""
SMALL = [*TINY_SYNTHETIC, "data.image_size=32", "data.batch_size=4", "pretext.batch_size=4"]
# the paper's sweeps: one job of each (fdr runs every job otherwise; paper_cpu sweeps 3 seeds)
ONE_JOB = ["data.label_fraction=0.05", "data.fold=0", "arms=[rotation]", "seed=42"]
SWEEPS = ("paper", "paper_cpu", "real_cpu", "real_probe", "real_finetune")
"""Experiments that are sweeps: narrowed to ONE_JOB here."""
PROBE_EXPERIMENTS = {"real_probe": ["data.split_seed=42", "protocols=[knn]"]}
"""Frozen-feature sweeps: one partition, k-NN (SMALL's 5 % leaves no validation image to choose a linear probe's C on);
their job fits no network, so fdr limits only the pretext."""
USER_FOLDERS = ("real_cpu", "real_probe", "real_finetune")
"""Experiments whose data is a user's folder: run on the built-in data here."""
VIT_EXPERIMENTS = ("dinov2", "mae", "retfound", "retfound_dinov2")
"""Run end to end (with a weights file of each layout) by tests/models/test_foundation.py and
tests/pretexts/test_mae.py; left out here to keep CI's time."""


def _run(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_dr.train", *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def _metrics(cwd: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in cwd.glob("outputs/**/metrics.json")]


@pytest.fixture(scope="module")
def imagenet_file(tmp_path_factory) -> Path:
    """ImageNet-shaped weights for arm=imagenet without the network."""
    path = tmp_path_factory.mktemp("imagenet") / "densenet121.pth"
    torch.save(timm.create_model("densenet121").state_dict(), path)
    return path


def test_every_experiment_runs_with_debug_fdr(tmp_path, imagenet_file):
    assert {"rotation", "baseline", "paper", "paper_cpu"} <= set(EXPERIMENTS)
    for experiment in EXPERIMENTS:
        if experiment in VIT_EXPERIMENTS:
            continue
        cwd = tmp_path / experiment
        cwd.mkdir()
        extra = [f"model.backbone.weights_file={imagenet_file}"] if experiment == "imagenet" else []
        extra += ONE_JOB if experiment in SWEEPS else []
        extra += ["data=synthetic"] if experiment in USER_FOLDERS else []
        extra += PROBE_EXPERIMENTS.get(experiment, [])
        result = _run(cwd, f"experiment={experiment}", "debug=fdr", *SMALL, *extra)
        assert result.returncode == 0, (experiment, result.stderr[-3000:])
        (metrics,) = _metrics(cwd)
        assert "test/qwk" in metrics, experiment
        if experiment in PROBE_EXPERIMENTS:
            assert metrics["protocol"] == "knn" and metrics["pretext/key"], experiment
            continue
        assert "testing the last weights" in result.stdout, experiment
        assert metrics["train/steps"] == 1, experiment
        assert "/outputs/debug/" in metrics["output_dir"] or experiment in SWEEPS, experiment


def test_fast_dev_run_alone_works_and_its_pretext_is_not_reused(tmp_path):
    fdr = _run(tmp_path, "experiment=rotation", "trainer.fast_dev_run=true", *SMALL)
    assert fdr.returncode == 0, fdr.stderr[-3000:]
    assert "testing the last weights" in fdr.stdout
    real = _run(tmp_path, "experiment=rotation", *SMALL, "trainer.max_steps=2", "trainer.val_check_interval=1",
                "model.classifier.freeze_steps=0", "model.classifier.scheduler.warmup_steps=1",
                "pretext.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1")
    assert real.returncode == 0, real.stderr[-3000:]
    runs = sorted(_metrics(tmp_path), key=lambda m: m["output_dir"])
    assert [m["pretext/reused"] for m in runs] == [False, False]  # one-batch weights never serve a real run
    assert runs[0]["pretext/key"] != runs[1]["pretext/key"]


@pytest.mark.parametrize("mode", ["limit", "overfit", "profiler"])
def test_other_debug_modes_run(tmp_path, mode):
    extra = ["trainer.max_steps=4", "trainer.val_check_interval=2", "model.classifier.freeze_steps=0",
             "model.classifier.scheduler.warmup_steps=1", "pretext.max_epochs=1", "trainer.limit_train_batches=2",
             "trainer.limit_val_batches=1"] if mode != "limit" else []
    if mode == "overfit":
        extra = [e for e in extra if not e.startswith("trainer.limit_")]
    result = _run(tmp_path, "experiment=baseline", f"debug={mode}", *SMALL, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    (metrics,) = _metrics(tmp_path)
    assert "/outputs/debug/" in metrics["output_dir"] and metrics["train/steps"] >= 4
