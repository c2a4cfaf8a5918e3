"""One GPU per parallel sweep job (``hydra/launcher=local_gpus``): Hydra's joblib launcher runs N jobs at once
on one node but gives every job all GPUs; each worker process must pin itself to its own GPU before CUDA
starts, and keep it for every job it runs. Torch-free until it counts the GPUs.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

from ssl_dr.errors import UserError

log = logging.getLogger(__name__)


class GpuSlotError(UserError, RuntimeError):
    """No GPU slot became free in time (more parallel jobs than GPUs, or another sweep holds them)."""


# Slots this process holds, by lock folder: (slot index, open lock file). The lock lives as long as the
# process, because a reused worker has already started CUDA on that GPU and cannot move to another.
_HELD: dict[str, tuple[int, IO[bytes]]] = {}


def claim_gpu_slot(lock_dir: Path, num_slots: int, wait_s: float | None = 600.0, poll_s: float = 1.0) -> int:
    """Take the first free slot in ``[0, num_slots)`` (an exclusive ``flock`` on ``lock_dir/slot<i>.lock``).

    The OS drops the lock when the process dies, so a crashed or recycled worker frees its GPU by itself;
    a new worker waits (up to ``wait_s``, ``None`` = forever) for a slot instead of sharing a busy GPU.
    """
    key = str(lock_dir.resolve())
    if key in _HELD:
        return _HELD[key][0]
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if wait_s is None else time.monotonic() + wait_s
    while True:
        for slot in range(num_slots):
            handle = open(lock_dir / f"slot{slot}.lock", "ab")  # held open until the process exits
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            _HELD[key] = (slot, handle)
            return slot
        if deadline is not None and time.monotonic() > deadline:
            raise GpuSlotError(f"all {num_slots} GPU slots in {lock_dir} stayed busy for {wait_s:.0f} s: run at "
                               "most one job per GPU (hydra.launcher.n_jobs = number of GPUs) and one such sweep "
                               "per node at a time")
        time.sleep(poll_s)


def release_gpu_slots() -> None:
    """Give back every slot of this process (tests; a worker keeps its slot until it exits)."""
    for _, handle in _HELD.values():
        handle.close()
    _HELD.clear()


def check_gpu_count(n_jobs: int, available: int) -> None:
    """``hydra.launcher.n_jobs`` parallel one-GPU jobs need that many GPUs on this node."""
    if available == 0:
        raise GpuSlotError("hydra/launcher=local_gpus runs one job per GPU, but this machine has no GPU that "
                           "torch can use; drop hydra/launcher=local_gpus (and trainer=gpu) to run on the CPU")
    if n_jobs > available:
        raise GpuSlotError(f"hydra.launcher.n_jobs={n_jobs} parallel GPU jobs, but this machine has {available} "
                           f"GPU(s) torch can use; set hydra.launcher.n_jobs={available}")


class GpuSlot(HydraCallback):
    """Hydra callback for ``hydra/launcher=local_gpus``: pin each job process to one GPU of its own.

    ``on_job_start`` runs inside the worker, before the task imports anything CUDA, so setting
    ``CUDA_VISIBLE_DEVICES`` there makes the job see exactly one GPU (``trainer.devices=1`` then means that
    one). Works out the physical GPU list in the launching process, where ``CUDA_VISIBLE_DEVICES`` (if the
    user restricted it) is still the original.
    """

    def __init__(self, num_gpus: int, lock_dir: str, wait_s: float | None = 600.0,
                 gpus_on_node: int | None = None) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else \
            [str(i) for i in range(num_gpus)]
        if len(self.devices) < num_gpus:
            raise GpuSlotError(f"{num_gpus} parallel GPU jobs asked for, but CUDA_VISIBLE_DEVICES={visible} "
                               f"names only {len(self.devices)} GPUs; lower hydra.launcher.n_jobs")
        self.num_gpus = num_gpus
        self.lock_dir = lock_dir
        self.wait_s = wait_s
        # None: count what torch sees at launch. A number: the launching process cannot see the node's GPUs
        # (a login or head node that starts jobs elsewhere, a container without the driver at launch time)
        self.gpus_on_node = gpus_on_node

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: more parallel jobs than GPUs would leave jobs waiting for a slot that never comes
        (or failing after ``wait_s``); say so in one line instead."""
        try:
            if self.gpus_on_node is None:
                import torch  # here: counting GPUs is the only torch this module needs

                available = torch.cuda.device_count()
            else:
                available = self.gpus_on_node
            check_gpu_count(self.num_gpus, available)
        except GpuSlotError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        slot = claim_gpu_slot(Path(self.lock_dir), self.num_gpus, self.wait_s)
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[slot]
        log.info("job %s runs on GPU %s (slot %d of %d, process %d)", config.hydra.job.num, self.devices[slot],
                 slot, self.num_gpus, os.getpid())


