"""ssl_dr.reporting.jobs: a job is arm x fraction x fold x seed x split seed; only a duplicate of all five is
refused, and the missing-job list covers every swept seed and split seed (multirun.yaml and the command line)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ssl_dr.report import main
from ssl_dr.reporting.jobs import ReportError, collect
from tests.test_report import job_dir, write_job

MULTIRUN = """hydra:
  sweeper:
    params:
      seed: 42,43,44
      data.fold: 0,1
      arm: rotation,baseline
  overrides:
    task:
    - experiment=paper
{task}"""


def seed_sweep(root: Path, task: tuple[str, ...] = (), seeds: tuple[int, ...] = (42, 43, 44),
               split_seeds: tuple[int, ...] = (42,)) -> Path:
    """Rotation and baseline x folds 0, 1 x ``seeds`` x ``split_seeds`` at 100 % labels, all finished, swept as
    experiment=paper with ``seed: 42,43,44`` in its sweeper params; ``task``: command-line overrides."""
    sweep = root / "sweep"
    sweep.mkdir()
    (sweep / "multirun.yaml").write_text(MULTIRUN.format(task="".join(f"    - {t}\n" for t in task)))
    jobs = [(split_seed, seed, fold, arm) for split_seed in split_seeds for seed in seeds for fold in (0, 1)
            for arm in ("rotation", "baseline")]
    for num, (split_seed, seed, fold, arm) in enumerate(jobs):
        write_job(sweep, num, arm, 1.0, fold, 0.5 + 0.01 * num, chooser="arm", seed=seed, split_seed=split_seed)
    return sweep


def test_repeated_arm_fraction_fold_over_seeds_is_one_complete_sweep(tmp_path):
    """experiment=paper_cpu seed=42,43,44 repeats every arm x fraction x fold: three jobs each, no refusal."""
    results = collect(seed_sweep(tmp_path))
    assert results.gaps == [] and len(results.jobs) == 12
    assert (results.seeds, results.split_seeds, results.folds) == ([42, 43, 44], [42], [0, 1])
    assert results.runs_per_cell == 6
    assert sorted(results.jobs.seed.unique()) == [42, 43, 44]


def test_split_seeds_are_an_axis_too(tmp_path):
    """data.split_seed=1,2 on the command line: the same fold number under two partitions is two jobs."""
    results = collect(seed_sweep(tmp_path, task=("data.split_seed=1,2",), split_seeds=(1, 2)))
    assert results.gaps == [] and results.split_seeds == [1, 2] and results.runs_per_cell == 12


def test_only_a_duplicate_of_all_five_keys_is_refused(tmp_path, capsys):
    sweep = seed_sweep(tmp_path)
    twin = write_job(sweep, 99, "rotation", 1.0, 1, 0.9, chooser="arm", seed=43)
    with pytest.raises(ReportError, match=f"jobs 6, {twin.name} are all arm=rotation fraction=1 fold=1 seed=43 "
                                          "split_seed=42; the report groups by arm x fraction x fold x seed x split"):
        collect(sweep)
    assert main([str(sweep)]) == 2 and "Traceback" not in capsys.readouterr().err
    shutil.rmtree(twin)
    write_job(sweep, 99, "rotation", 1.0, 1, 0.9, chooser="arm", seed=43, split_seed=7)  # differs in one key
    assert collect(sweep).split_seeds == [7, 42]


def test_deleted_seed_is_missing_from_the_sweepers_seed_list(tmp_path):
    """Every job of seed 44 deleted: multirun.yaml's ``seed: 42,43,44`` still expects them, by name."""
    sweep = seed_sweep(tmp_path)
    for fold in (0, 1):
        for arm in ("rotation", "baseline"):
            shutil.rmtree(job_dir(sweep, arm, 1.0, fold, seed=44))
    results = collect(sweep)
    assert results.seeds == [42, 43, 44]
    assert sorted(str(gap) for gap in results.gaps) == sorted(
        f"MISSING: arm={arm} fraction=1 fold={fold} seed=44 split_seed=42 (no job folder)"
        for arm in ("rotation", "baseline") for fold in (0, 1))


def test_command_line_seeds_replace_the_sweepers(tmp_path):
    """``experiment=paper_cpu seed=0,1``: the command line wins over the preset's 42,43,44, as in Hydra; a
    missing split seed of ``data.split_seed=5,6`` is expected as well."""
    sweep = seed_sweep(tmp_path, task=("seed=0,1", "data.split_seed=5,6"), seeds=(0, 1), split_seeds=(5,))
    results = collect(sweep)
    assert (results.seeds, results.split_seeds) == ([0, 1], [5, 6])
    assert len(results.gaps) == 8 and {(gap.kind, gap.split_seed) for gap in results.gaps} == {("MISSING", 6)}


def test_failed_job_is_named_by_its_config_seed_and_split_seed(tmp_path):
    """A crashed job (no metrics.json) is identified from .hydra/config.yaml: seed and split seed included."""
    sweep = seed_sweep(tmp_path)
    job = job_dir(sweep, "baseline", 1.0, 0, seed=43)
    (job / "metrics.json").unlink()
    (job / "train.log").write_text("[2026-12-07 09:34:39,678][__main__][ERROR] - job failed: RuntimeError: boom\n"
                                   "Traceback (most recent call last):\nRuntimeError: boom\n")
    assert [str(gap) for gap in collect(sweep).gaps] == [
        f"FAILED: arm=baseline fraction=1 fold=0 seed=43 split_seed=42 (job {job.name}: RuntimeError: boom)"]


@pytest.mark.parametrize("log", [
    "[2026-12-07 09:34:39,678][ssl_dr.models.classifier][INFO] - validation at step 20: every image graded 0\n",
    None,  # killed before its log was written
])
def test_a_job_without_result_or_logged_error_is_unfinished_not_failed(log, tmp_path):
    """A report made while the sweep runs (the README says it is safe) once called the running job FAILED,
    quoting an INFO line: without metrics.json and without an error in its log, a job is still running or
    was stopped mid-job, and the report says so."""
    sweep = seed_sweep(tmp_path)
    job = job_dir(sweep, "baseline", 1.0, 0, seed=43)
    (job / "metrics.json").unlink()
    if log is not None:
        (job / "train.log").write_text(log)
    [gap] = collect(sweep).gaps
    assert gap.kind == "UNFINISHED"
    assert str(gap).startswith(f"UNFINISHED: arm=baseline fraction=1 fold=0 seed=43 split_seed=42 (job {job.name}: "
                               "no metrics.json and no error logged: still running, or stopped mid-job "
                               "(resume=last continues it)")
    assert ("its log ends: [2026-12-07 09:34:39,678][ssl_dr.models.classifier][INFO]" in str(gap)) == (log is not None)


def test_job_without_config_reads_seed_from_metrics_json_or_is_refused(tmp_path):
    sweep = seed_sweep(tmp_path)
    job = job_dir(sweep, "rotation", 1.0, 1, seed=44)
    shutil.rmtree(job / ".hydra")
    assert collect(sweep).gaps == []  # seed 44 / split seed 42 read from metrics.json
    text = (job / "metrics.json").read_text().replace('"seed": 44,', "")
    (job / "metrics.json").write_text(text)
    with pytest.raises(ReportError, match="cannot read the job's arm, fraction, fold, seed and split seed"):
        collect(sweep)
