"""Sweeps: parallel jobs share one pretext; a failing job does not stop the others."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY


def _start(cwd: Path, *overrides: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ssl_dr.train", *TINY, *overrides], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.e2e
def test_parallel_jobs_train_the_pretext_once(tmp_path):
    """Two processes need the same pretext at once: exactly one trains it, the other waits and reuses."""
    # the dataset is written first so both jobs start training at the same moment
    first = _start(tmp_path, "experiment=baseline", "trainer.max_steps=2")
    assert first.wait(timeout=300) == 0, first.stdout.read()[-3000:]
    jobs = [_start(tmp_path, "experiment=rotation", f"data.label_fraction={f}") for f in (0.5, 1.0)]
    outputs = [job.communicate(timeout=600)[0] for job in jobs]
    assert all(job.returncode == 0 for job in jobs), outputs[0][-2000:] + outputs[1][-2000:]
    metrics = [json.loads(p.read_text()) for p in (tmp_path / "outputs" / "rotation" / "runs").glob("*/metrics.json")]
    assert len(metrics) == 2
    assert sorted(m["pretext/reused"] for m in metrics) == [False, True]
    assert metrics[0]["pretext/key"] == metrics[1]["pretext/key"]
    assert len(list((tmp_path / "cache" / "pretext").iterdir())) == 1


def _sweep(cwd: Path, *overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssl_dr.train", *overrides, *TINY], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.mark.e2e
def test_paper_sweep_reports_every_cell_and_names_missing_jobs(tmp_path):
    """experiment=paper through the real config (2 arms x 2 fractions x 2 folds): the report written at the
    sweep's end matches the jobs' metrics.json cell by cell; a deleted job makes the sweep incomplete."""
    import pandas as pd

    result = _sweep(tmp_path, "experiment=paper", "data.label_fraction=0.5,1.0", "data.fold=0,1",
                    "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "paper" / "multiruns").iterdir()
    jobs = [json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")]
    assert len(jobs) == 8
    assert len({j["pretext/key"] for j in jobs if j["arm"] == "rotation"}) == 1
    assert sum(not j["pretext/reused"] for j in jobs if j["arm"] == "rotation") == 1
    splits = {(j["fold"], j["label_fraction"]): [] for j in jobs}
    for j in jobs:
        splits[(j["fold"], j["label_fraction"])].append((Path(j["output_dir"]) / "split.csv").read_text())
    assert all(a == b for a, b in splits.values())  # both arms saw identical splits

    report = pd.read_csv(sweep / "report.csv")
    assert len(report) == 4 and (report.runs_present == 2).all()
    for row in report.itertuples():
        scores = [j["test/qwk"] for j in jobs if j["arm"] == row.arm and j["label_fraction"] == row.label_fraction]
        assert row.qwk_min == pytest.approx(min(scores)) and row.qwk_max == pytest.approx(max(scores))
        assert row.qwk_avg == pytest.approx(sum(scores) / 2)
    assert (sweep / "qwk_vs_fraction.png").stat().st_size > 10_000
    assert "Incomplete" not in (sweep / "report.md").read_text()

    victim = next(p.parent for p in sweep.glob("*/metrics.json")
                  if json.loads(p.read_text())["arm"] == "baseline" and json.loads(p.read_text())["fold"] == 1)
    fraction = json.loads((victim / "metrics.json").read_text())["label_fraction"]
    shutil.rmtree(victim)
    rerun = subprocess.run([sys.executable, "-m", "ssl_dr.report", str(sweep)], capture_output=True, text=True)
    assert rerun.returncode == 1
    assert f"MISSING: arm=baseline fraction={fraction} fold=1" in rerun.stdout


@pytest.mark.e2e
def test_failing_job_does_not_stop_the_sweep(tmp_path):
    """One job with an impossible fold fails; the other runs, and the report names the failure."""
    result = _sweep(tmp_path, "-m", "experiment=baseline", "data.fold=1,9", "trainer.max_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "outputs" / "sweep" / "multiruns").iterdir()
    assert len(list(sweep.glob("*/metrics.json"))) == 1
    report = (sweep / "report.md").read_text()
    assert "FAILED: arm=baseline" in report and "fold=9" in report and "outside [0, 5)" in report
    # each job started with where the sweep stood, on the console and in its own train.log
    assert "sweep job 1/2 [--------------------] 0 done;" in result.stdout
    assert "sweep job 2/2 [##########----------] 1 done;" in result.stdout and "left: " in result.stdout
    assert "sweep job 1/2 [" in (sweep / "0" / "train.log").read_text()


@pytest.mark.parametrize(("overrides", "expected"), [
    ([], "rotation,baseline"),
    (["arms=[rotation,jigsaw,simclr,imagenet,baseline]"], "rotation,jigsaw,simclr,imagenet,baseline"),
    (["arms=[rotation,mae,retfound,dinov2,baseline]"], "rotation,mae,retfound,dinov2,baseline"),
    (["arms=[baseline]"], "baseline")])
def test_paper_sweeps_the_listed_arms(overrides, expected):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from ssl_dr.train import CONFIG_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=paper", *overrides], return_hydra_config=True)
    assert cfg.hydra.sweeper.params.arm == expected


@pytest.mark.parametrize("bad", [[], ["rotation,baseline"], [" "]])
def test_sweep_values_refuses_an_empty_or_comma_list(bad):
    from ssl_dr.launch.resolvers import sweep_values

    with pytest.raises(ValueError, match="arms=\\[rotation,baseline\\]"):
        sweep_values(bad)
