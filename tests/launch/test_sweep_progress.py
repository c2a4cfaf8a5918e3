"""``ssl_dr.launch.sweep_progress``: the sweep's size as Hydra's sweeper expands it, and the line each job
starts with (the real multirun's lines: tests/launch/test_sweep.py)."""

from __future__ import annotations

import json
import logging
import os
import time

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from omegaconf import open_dict

from ssl_dr.launch.folders import SWEEP_SIZE, read_sweep_size
from ssl_dr.launch.sweep_progress import SweepProgress, pretext_seconds, progress_line, sweep_size
from ssl_dr.train import CONFIG_DIR


def _swept(override: str) -> bool:
    return OverridesParser.create().parse_overrides([override])[0].is_sweep_override()


def _hydra_cfg(*overrides: str):
    """The config as a multirun sees it: composed from the overrides without their swept ones (compose runs in
    RUN mode, which refuses them), with all of them as the command line's ``hydra.overrides.task``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=[o for o in overrides if not _swept(o)],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.overrides.task = list(overrides)
    return cfg


@pytest.mark.parametrize(("overrides", "jobs"), [
    (["experiment=paper_cpu"], 3 * 5 * 5 * 2),  # its config's seeds x fractions x folds x arms
    (["experiment=paper_cpu", "seed=7"], 5 * 5 * 2),  # the command line wins over the config's sweep
    (["experiment=paper", "arms=[rotation,jigsaw,baseline]"], 5 * 5 * 3),
    (["experiment=rotation", "seed=1,2", "data.fold=0,1,2"], 6),
    (["experiment=rotation", "hparams_search=finetune_optuna"], None),  # replaced below by its n_trials
])
def test_the_sweep_size_is_what_the_sweeper_launches(overrides, jobs):
    cfg = _hydra_cfg(*overrides)
    expected = jobs if jobs is not None else int(cfg.hydra.sweeper.n_trials)
    assert sweep_size(cfg) == expected


def test_the_line_says_job_bar_done_elapsed_and_left():
    line = progress_line(7, 50, 6, 4, 600.0, "arm=rotation data.fold=1")  # 4 done here in 600 s, 44 to go
    assert line.startswith("sweep job 7/50 [##------------------] 6 done; 0:10:00 elapsed, about 1:50:00 left")
    assert line.endswith(": arm=rotation data.fold=1")
    assert "left" not in progress_line(1, 50, 0, 0, 3.0, "")  # nothing finished yet: no estimate
    assert progress_line(3, None, 2, 2, 60.0, "x=1").startswith("sweep job 3: 2 done; 0:01:00 elapsed:")


def test_each_job_logs_where_the_sweep_stands(tmp_path, caplog):
    cfg = _hydra_cfg("experiment=rotation", "seed=1,2", "data.fold=0,1")
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path)
        cfg.hydra.mode = RunMode.MULTIRUN
    callback = SweepProgress()
    callback.on_multirun_start(cfg)
    assert json.loads((tmp_path / SWEEP_SIZE).read_text())["jobs"] == 4
    kept = tmp_path / "0" / "metrics.json"  # finished before this invocation (a resumed sweep keeps it)
    kept.parent.mkdir()
    kept.write_text("{}")
    os.utime(kept, (time.time() - 3600, time.time() - 3600))
    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "metrics.json").write_text("{}")
    with open_dict(cfg):
        cfg.hydra.job.num = 2
        cfg.hydra.overrides.task = ["seed=2", "data.fold=0"]
    with caplog.at_level(logging.INFO, logger="ssl_dr.launch.sweep_progress"):
        callback.on_job_start(cfg)
    assert "sweep job 3/4 [##########----------] 2 done;" in caplog.text
    assert "left: seed=2 data.fold=0" in caplog.text


@pytest.mark.parametrize("damaged", ['{"jobs": 4, "sta', "[]", '{"jobs": 4}', ""])
def test_a_damaged_size_file_skips_the_line_instead_of_failing_the_job(damaged, tmp_path, caplog):
    """A size file cut short (a full disk, a kill mid-write) must not fail every job of the sweep: the line
    is left out, the job runs, and resume=last still treats the sweep's size as unknown (folders)."""
    cfg = _hydra_cfg("experiment=rotation", "seed=1,2")
    with open_dict(cfg):
        cfg.hydra.sweep.dir = str(tmp_path)
        cfg.hydra.mode = RunMode.MULTIRUN
        cfg.hydra.job.num = 0
    (tmp_path / SWEEP_SIZE).write_text(damaged)
    with caplog.at_level(logging.INFO, logger="ssl_dr.launch.sweep_progress"):
        SweepProgress().on_job_start(cfg)
    assert "sweep job" not in caplog.text
    assert read_sweep_size(tmp_path) is None


def test_the_pace_leaves_out_the_time_jobs_spent_training_a_pretext(tmp_path):
    """paper_cpu's seed trains its rotation (114 s) and MAE (222 s) pretexts in its first two jobs; counted in
    the pace, they doubled the first estimates of a 75-job sweep. 3 jobs done in 636 s, 336 s of it pretexts:
    100 s a job, 72 jobs left."""
    line = progress_line(4, 75, 3, 3, 636.0, "arm=rotation", one_off=336.0)
    assert "0:10:36 elapsed, about 2:00:00 left" in line
    assert "about 4:14:24 left" in progress_line(4, 75, 3, 3, 636.0, "arm=rotation")  # the pace with them
    trained, reused, other, broken = (tmp_path / f"{name}.json" for name in ("trained", "reused", "other", "broken"))
    trained.write_text(json.dumps({"pretext/seconds": 113.9, "pretext/reused": False}))
    reused.write_text(json.dumps({"pretext/seconds": 113.9, "pretext/reused": True}))  # trained by another job
    other.write_text(json.dumps({"test/qwk": 0.4}))  # the baseline: no pretext
    broken.write_text('{"pretext/seconds": 1')
    assert [pretext_seconds(path) for path in (trained, reused, other, broken)] == [113.9, 0.0, 0.0, 0.0]
