"""Copy a sweep's per-job records (what the report reads, nothing more) into a folder to commit: ``results/<name>``.

Why: a sweep folder holds checkpoints, pretext weights, W&B folders and image caches (gigabytes); the numbers
behind a published table are a few small text files per job. ``publish`` copies exactly those, keeping the
numbered job folders and ``multirun.yaml``, so ``python -m ssl_dr.report results/<name>`` re-derives the same
report.md and report.csv from the committed copy (the folder's own path and name in its header aside):
``metrics.json`` (the scores), ``environment.json`` (what it ran on), ``.hydra/config.yaml`` and
``.hydra/overrides.yaml`` (who the job is, which arm and protocol the sweep asked for, k), the job's ``*.log``
(a job without metrics.json is FAILED or UNFINISHED by its log) and ``test_predictions.csv`` (collapsed runs;
and re-deriving any test metric). Not ``external_predictions.csv``: one row per external image in every job
(2,046 rows, ~150 KB, per job for eyepacs-dev: 90 MB for a 600-job sweep), while its figures are in metrics.json.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ssl_dr.reporting.jobs import ReportError, job_dirs
from ssl_dr.run_contract import ENVIRONMENT, METRICS, TEST_PREDICTIONS

SWEEP_RECORDS = ("multirun.yaml",)
JOB_RECORDS = (METRICS, ENVIRONMENT, ".hydra/config.yaml", ".hydra/overrides.yaml", TEST_PREDICTIONS)
LOGS = "*.log"  # the job's own log (train.log), at the job folder's top


def record_files(sweep_dir: Path) -> list[Path]:
    """The sweep's record files, relative to ``sweep_dir``: SWEEP_RECORDS, and per job folder JOB_RECORDS and
    its logs, those that exist."""
    sweep_dir = Path(sweep_dir)
    files = [Path(name) for name in SWEEP_RECORDS if (sweep_dir / name).is_file()]
    for job in job_dirs(sweep_dir):
        names = [Path(name) for name in JOB_RECORDS if (job / name).is_file()]
        names += sorted(log.relative_to(job) for log in job.glob(LOGS) if log.is_file())
        files += [job.relative_to(sweep_dir) / name for name in names]
    return files


def publish(sweep_dir: Path, dest: Path) -> list[Path]:
    """Copy ``record_files`` of ``sweep_dir`` into ``dest`` (a new or empty folder), keeping their times (the
    report picks a job's newest log); returns the copies."""
    sweep_dir, dest = Path(sweep_dir), Path(dest)
    files = record_files(sweep_dir)  # refuses a folder that is no sweep before anything is made
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ReportError(f"{dest}: already exists and is not an empty folder; publish into a new folder "
                          "(or delete this one to publish again)")
    if dest.resolve().is_relative_to(sweep_dir.resolve()):
        raise ReportError(f"{dest}: inside the sweep folder {sweep_dir}; publish elsewhere (results/<name>)")
    copies = []
    for name in files:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        copies.append(Path(shutil.copy2(sweep_dir / name, dest / name)))
    return copies
