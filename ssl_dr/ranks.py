"""Rank-0 hand-offs: every DDP rank runs the whole job, but some choices (reuse a stored pretext or train it)
are made once, by rank 0, before DDP exists; the other ranks follow that choice and never take the pretext
store's lock (rank 0 holds it while training *with* them).

A follower that waits for rank 0 must not wait forever when rank 0 died (killed, out of memory, a node
lost): rank 0 keeps a heartbeat file fresh for as long as its job runs (``RankZeroHeartbeat``), and a
follower gives up with one clear message when that heartbeat goes stale or never appears. Waiting on a live
rank 0 has no limit: it may be waiting for another job that trains the same pretext for hours.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

from ssl_dr.errors import UserError
from ssl_dr.run_contract import write_atomic

# Environment variables that carry the global rank before Lightning sets DDP up: torchrun, SLURM (srun), and
# Lightning's own relaunch of the script (NODE_RANK/LOCAL_RANK in the processes it starts).
RANK_VARIABLES = ("RANK", "SLURM_PROCID", "NODE_RANK", "LOCAL_RANK")


def is_launch_rank_zero() -> bool:
    """True in the process that owns the run (rank 0, or a run without DDP); usable before ``trainer.fit``."""
    return all(int(os.environ.get(var) or 0) == 0 for var in RANK_VARIABLES)


def _launch_id() -> str:
    """Per launch: SLURM starts all ranks at once (SLURM_JOB_ID tells attempts apart); Lightning starts the
    others only at rank 0's first fit, after the choice is written, so they never see an older one."""
    return os.environ.get("SLURM_JOB_ID") or os.environ.get("TORCHELASTIC_RUN_ID") or "local"


def _choice_path(out_dir: Path, name: str) -> Path:
    return out_dir / f".rank0-{name}-{_launch_id()}.json"


def heartbeat_path(out_dir: Path) -> Path:
    return out_dir / f".rank0-alive-{_launch_id()}"


HEARTBEAT_EVERY_S = 5.0
STALE_AFTER_S = 120.0
"""A follower declares rank 0 dead when its heartbeat is this old (or, before the first beat, when the
hand-off has not appeared this long after the follower started waiting)."""


class RankZeroHeartbeat:
    """Rank 0 touches ``heartbeat_path(out_dir)`` every few seconds, from a daemon thread, while its job runs
    (``with RankZeroHeartbeat(out_dir):``); a killed rank 0 stops beating with it. No-op on other ranks."""

    def __init__(self, out_dir: Path, every_s: float = HEARTBEAT_EVERY_S) -> None:
        self.path, self.every_s = heartbeat_path(Path(out_dir)), every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while not self._stop.is_set():
            self.path.touch()
            self._stop.wait(self.every_s)

    def __enter__(self) -> RankZeroHeartbeat:
        if is_launch_rank_zero():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.touch()
            self._thread = threading.Thread(target=self._beat, name="rank0-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self.path.unlink(missing_ok=True)  # a finished rank 0 is not a live one


def share_choice(out_dir: Path, name: str, choice: dict[str, Any]) -> None:
    """Rank 0: record a choice for the other ranks of this run (written atomically, never read half-done)."""
    write_atomic(_choice_path(out_dir, name), lambda tmp: tmp.write_text(json.dumps(choice)))


def await_choice(out_dir: Path, name: str, stale_s: float = STALE_AFTER_S) -> dict[str, Any]:
    """Other ranks: the choice rank 0 published (it may first wait for another job's lock, hence no limit
    while it is alive)."""
    return json.loads(await_file(_choice_path(out_dir, name), heartbeat_path(out_dir), stale_s).read_text())


def await_file(path: Path, heartbeat: Path, stale_s: float = STALE_AFTER_S, poll_s: float = 1.0) -> Path:
    """Wait until ``path`` exists (a file rank 0 writes atomically) for as long as rank 0 is alive: its
    ``heartbeat`` file fresher than ``stale_s`` seconds. A dead rank 0 ends the wait with a clear error."""
    started = time.time()
    while not path.exists():
        try:
            last_beat = heartbeat.stat().st_mtime
        except FileNotFoundError:
            last_beat = started  # not beating yet: rank 0 may still be starting
        silent = time.time() - last_beat
        if silent > stale_s:
            raise RankZeroGoneError(
                f"waited for {path.name} from rank 0, but rank 0 has shown no sign of life for {silent:.0f} s "
                f"(heartbeat {heartbeat}); it probably died: see rank 0's log, fix that, and start the job again")
        time.sleep(poll_s)
    return path


class RankZeroGoneError(UserError, RuntimeError):
    """A DDP rank waited for rank 0's hand-off and rank 0 is gone."""
