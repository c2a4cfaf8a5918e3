"""Run and sweep folders: a fresh stamped folder, or the unfinished one that ``resume`` continues.

``python -m ssl_dr.train <same overrides> resume=last`` (or ``resume=<folder>``) continues the newest
unfinished run -- or, for a multirun, the newest unfinished *sweep* -- started with exactly the same
overrides, in the same folder. The folder is chosen while Hydra resolves ``hydra.run.dir`` /
``hydra.sweep.dir`` (resolvers ``ssl_dr.run_dir`` / ``ssl_dr.sweep_dir``), before Hydra rewrites any file
in it, so the old command can still be compared.

Inside a resumed sweep a job whose folder holds ``metrics.json`` is not run again (``finished_job``) and
Hydra does not rewrite its ``.hydra/`` files (``ssl_dr.config_subdir``); a killed job continues from its
``checkpoints/last.ckpt`` and a killed pretext from its partial checkpoint (``ssl_dr.training.phases``); a failed
job runs again. Torch-free: these run while Hydra composes the config.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from ssl_dr.run_contract import METRICS

RESUME_KEY = "resume"
SWEEP_CONFIG = "multirun.yaml"  # written by Hydra's sweepers into every sweep folder
SWEEP_REPORT = "report.md"  # ssl_dr.report's markdown, written when a sweep ends
JOB_FAILED = "job failed:"
"""How ``ssl_dr.train`` starts the log line of a job that failed inside a sweep; the report reads it back to
tell a failed job from one still running (``ssl_dr.reporting.jobs``)."""
SWEEP_SIZE = ".sweep_size.json"
"""How many jobs the sweep launches (``{"jobs": N or null, "started": time}``), written by
``ssl_dr.launch.sweep_progress`` when the sweep (or its resume) starts."""
RESUMES_DIR = ".resumes"
"""``<sweep>/.resumes/<stamp>``: the sweep that the resume started at ``<stamp>`` continues. Every job of
that resume resolves ``hydra.sweep.dir`` again (with the launcher's cached stamp but its own overrides), and
finds its sweep through this file instead of choosing again."""


def _command(overrides: list[str]) -> list[str]:
    return sorted(o for o in overrides if not o.startswith(f"{RESUME_KEY}="))


def _started_with(run_dir: Path) -> list[str] | None:
    path = run_dir / ".hydra" / "overrides.yaml"
    return list(yaml.safe_load(path.read_text()) or []) if path.is_file() else None


def run_dir(resume: str | None, runs_dir: str, stamp: str, overrides: Any) -> str:
    """``hydra.run.dir``: a fresh ``<runs_dir>/<stamp>``, or the unfinished run to resume."""
    if not resume:
        return f"{runs_dir}/{stamp}"
    current = _command(list(overrides))
    if str(resume) == "last":
        candidates = sorted((p for p in Path(runs_dir).glob("*") if p.is_dir()), reverse=True)
        for candidate in candidates:
            if not (candidate / METRICS).exists() and _command(_started_with(candidate) or []) == current:
                return str(candidate)
        raise ValueError(f"resume=last: no unfinished run started with {current} under {runs_dir}; "
                         "drop resume= to start a new run")
    folder = Path(str(resume)).expanduser().resolve()
    before = _started_with(folder)
    if before is None:
        raise ValueError(f"resume={resume}: {folder} is not a run folder (no .hydra/overrides.yaml)")
    if _command(before) != current:
        raise ValueError(f"resume={resume}: that run was started with {_command(before)}, this command has "
                         f"{current}; resume only with the same command")
    if (folder / METRICS).exists():
        raise ValueError(f"resume={resume}: {folder} already finished (metrics.json exists); nothing to resume")
    return str(folder)


def _sweep_command(sweep: Path) -> list[str] | None:
    """The overrides a sweep was started with (its ``multirun.yaml``), or None for a non-sweep folder."""
    path = sweep / SWEEP_CONFIG
    if not path.is_file():
        return None
    try:
        saved = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        return None
    return list(((saved.get("hydra") or {}).get("overrides") or {}).get("task") or [])


def read_sweep_size(sweep: Path) -> dict[str, Any] | None:
    """The sweep's ``SWEEP_SIZE`` record (``jobs``: int or None, ``started``: a time), or None where it is
    missing or unreadable (a sweep from before the file existed, a file cut short by a full disk). Both readers
    (``sweep_finished`` here and the progress line) go through this one, so a damaged file never ends a sweep
    early in one place and crashes a job in the other."""
    try:
        record = json.loads((sweep / SWEEP_SIZE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not isinstance(record.get("started"), (int, float)):
        return None
    jobs = record.get("jobs")
    return {"jobs": jobs if isinstance(jobs, int) and not isinstance(jobs, bool) else None,
            "started": float(record["started"])}


def sweep_finished(sweep: Path) -> bool:
    """A sweep ended (its report exists), none of its jobs is without ``metrics.json`` (none failed), and every
    job it launches has run. The last check matters for a report written by hand (``python -m ssl_dr.report``)
    in the middle of a sweep: killed between two jobs, the sweep has a report and only finished job folders,
    yet most of its jobs never started, and ``resume=last`` must still find it."""
    jobs = [d for d in sweep.iterdir() if d.is_dir() and ((d / ".hydra").is_dir() or (d / METRICS).exists())]
    size = read_sweep_size(sweep)  # None, or jobs None: an older sweep or a search without a fixed size
    launched = None if size is None else size["jobs"]
    return ((sweep / SWEEP_REPORT).is_file() and all((d / METRICS).is_file() for d in jobs)
            and (launched is None or len(jobs) >= launched))


def _sweep_to_resume(resume: str, sweeps_dir: Path, current: list[str]) -> Path:
    if str(resume) == "last":
        candidates = sorted((p for p in sweeps_dir.glob("*") if p.is_dir()), reverse=True)
        for candidate in candidates:
            if _command(_sweep_command(candidate) or ["<not a sweep>"]) == current and not sweep_finished(candidate):
                return candidate
        raise ValueError(f"resume=last: no unfinished sweep started with {current} under {sweeps_dir}; "
                         "drop resume= to start a new sweep")
    folder = Path(str(resume)).expanduser().resolve()
    before = _sweep_command(folder)
    if before is None:
        raise ValueError(f"resume={resume}: {folder} is not a sweep folder (no readable {SWEEP_CONFIG})")
    if folder.parent != sweeps_dir.resolve():
        raise ValueError(f"resume={resume}: this command's sweeps go to {sweeps_dir}, not to {folder.parent}; "
                         "resume with the command (sweep_name, paths) that started that sweep")
    if _command(before) != current:
        raise ValueError(f"resume={resume}: that sweep was started with {_command(before)}, this command has "
                         f"{current}; resume only with the same command")
    if sweep_finished(folder):
        raise ValueError(f"resume={resume}: {folder} already finished (every job has metrics.json and the report "
                         "is written); nothing to resume")
    return folder


def sweep_dir(resume: str | None, sweeps_dir: str, stamp: str, overrides: Any, mode: Any = None) -> str:
    """``hydra.sweep.dir``: a fresh ``<sweeps_dir>/<stamp>``, or the unfinished sweep that ``resume`` names.

    Resolved by the launcher first (with the sweep's command line), then once per job (with that job's
    overrides but the launcher's cached stamp): the launcher's choice is recorded in
    ``<sweep>/.resumes/<stamp>`` and the jobs read it back. Outside a multirun nothing is chosen (a single
    run's ``resume`` is ``ssl_dr.run_dir``'s business)."""
    fresh = f"{sweeps_dir}/{stamp}"
    if not resume or "MULTIRUN" not in str(mode):
        return fresh
    root = Path(sweeps_dir)
    chosen = sorted(root.glob(f"*/{RESUMES_DIR}/{stamp}"))
    if chosen:  # a job of a sweep whose launcher already chose
        return str(chosen[0].parent.parent)
    folder = _sweep_to_resume(resume, root, _command(list(overrides)))
    marker = folder / RESUMES_DIR / stamp
    marker.parent.mkdir(exist_ok=True)
    marker.touch()
    print(f"[ssl_dr] resuming sweep {folder}: finished jobs are kept, the others run (again)")
    return str(root / folder.name)


def config_subdir(output_dir: Any) -> str | None:
    """``hydra.output_subdir``: ``.hydra``, except for a finished job of a resumed sweep, whose files stay
    as they were (Hydra would otherwise rewrite its config with the resume command)."""
    if output_dir is not None and (Path(str(output_dir)) / METRICS).is_file():
        return None
    return ".hydra"


def finished_job(output_dir: str | Path) -> dict[str, Any] | None:
    """The metrics of a job that already finished in this folder (a resumed sweep skips it), or None when
    it has to run: no ``metrics.json``, or one that cannot be read (written half by a killed job)."""
    path = Path(output_dir) / METRICS
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def requeued_by_slurm() -> bool:
    """This job is a SLURM requeue (preempted, or timed out under submitit's ``max_num_timeout``): it
    continues from its checkpoints without ``resume=``, since submitit starts it again with its first config."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
