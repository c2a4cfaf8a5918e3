"""Hydra callback: every sweep job starts with one line saying where the sweep stands.

``[ssl_dr] sweep job 7/50 [##----------------] 6 done; 0:41:10 elapsed, about 4:50:00 left: arm=... seed=...``

Why a log line and not a live bar: each job already draws Lightning's progress bar, and parallel launchers
(``hydra/launcher=local_gpus``) run jobs in other processes; a line per job reads the same in the console, in
the job's ``train.log`` and in a SLURM log. It is worked out from the sweep folder alone, so it holds in any
process: the size of the sweep (written at ``on_multirun_start`` to ``SWEEP_SIZE``: Hydra's basic sweeper's own
expansion of the sweep, or an Optuna search's ``n_trials``), the jobs that have a ``metrics.json``, and the time
since this invocation started (the estimate counts only jobs finished since then, so a resumed sweep's kept jobs
do not make it optimistic).
"""

from __future__ import annotations

import json
import logging
import math
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from ssl_dr.launch.folders import SWEEP_SIZE, read_sweep_size
from ssl_dr.launch.objective import BASIC_SWEEPER
from ssl_dr.run_contract import METRICS

log = logging.getLogger(__name__)

BAR_WIDTH = 20


def sweep_size(config: DictConfig) -> int | None:
    """Jobs the multirun described by ``config`` launches, or None where its sweeper does not say."""
    sweeper = config.hydra.sweeper
    target = str(sweeper.get("_target_", ""))
    if target.endswith(BASIC_SWEEPER):
        params = [f"{key}={sweeper.params[key]}" for key in (sweeper.get("params") or {})]
        overrides = OverridesParser.create().parse_overrides([*params, *config.hydra.overrides.task])
        return sum(len(batch) for batch in BasicSweeper.split_arguments(overrides, None))
    trials = sweeper.get("n_trials")
    return int(trials) if trials is not None else None


def progress_line(job: int, total: int | None, done: int, done_here: int, elapsed: float, overrides: str,
                  one_off: float = 0.0) -> str:
    """The line for job ``job`` (1-based): bar and counts, elapsed time and an estimate of what is left: the
    jobs left times the time per job done here, without ``one_off``, the seconds those jobs spent training a
    pretext. A pretext is trained once per seed by the seed's first job of each arm, and counted in the pace it
    made the estimate of issue 22's 75-job sweep 4:13 at job 4 when 2:25 was left (this rule: 1:59)."""
    if total is None:
        head = f"sweep job {job}: {done} done"
    else:
        filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
        head = f"sweep job {job}/{total} [{'#' * filled}{'-' * (BAR_WIDTH - filled)}] {done} done"
    timing = f"{timedelta(seconds=round(elapsed))} elapsed"
    if total is not None and done_here:
        per_job = max(elapsed - one_off, 0.0) / done_here
        timing += f", about {timedelta(seconds=round(per_job * max(total - done, 0)))} left"
    return f"{head}; {timing}: {overrides or '(no overrides)'}"


class SweepProgress(Callback):
    """``on_multirun_start`` records the sweep's size; ``on_job_start`` logs ``progress_line``."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / SWEEP_SIZE).write_text(json.dumps({"jobs": sweep_size(config), "started": time.time()}))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        size = read_sweep_size(sweep_dir)
        if size is None:  # a single run, a launcher that skipped on_multirun_start, or a damaged file
            return
        finished = {path: path.stat().st_mtime for path in sweep_dir.glob(f"*/{METRICS}")}
        here = [path for path, mtime in finished.items() if mtime >= size["started"]]
        log.info("%s", progress_line(int(config.hydra.job.num) + 1, size["jobs"], len(finished), len(here),
                                     time.time() - size["started"], " ".join(config.hydra.overrides.task),
                                     one_off=sum(pretext_seconds(path) for path in here)))


def pretext_seconds(metrics: Path) -> float:
    """Seconds the job spent training its pretext (``pretext/seconds`` in its ``metrics.json``), 0 for a
    reused pretext, a job without one, or a file that cannot be read (the line is only an estimate)."""
    try:
        record = json.loads(metrics.read_text())
        seconds = 0.0 if record.get("pretext/reused", True) else float(record.get("pretext/seconds") or 0.0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0.0
    return seconds if math.isfinite(seconds) else 0.0
