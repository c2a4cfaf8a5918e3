"""Scale-out pieces: model-side speed switches, one GPU per parallel sweep job, and the multirun + DDP guard.

Each piece exists because the obvious setting alone is not enough:

- ``ScaleCallback``: channels_last, ``torch.compile`` and gradient checkpointing act on the *model*, not the
  Trainer, so ``trainer=gpu`` cannot switch them on; a callback keeps the modules plain (same checkpoint and
  backbone-file keys) and the switches in config (``scale.*``).
- ``GpuSlot``: Hydra's joblib launcher runs N jobs at once on one node but gives every job all GPUs; each
  worker process must pin itself to its own GPU before CUDA starts, and keep it for every job it runs.
- ``check_multirun_strategy``: Lightning's ``ddp`` re-runs the script once per rank; inside a Hydra multirun
  that restarts the whole sweep in every rank and scatters the output folders. Only a launcher that starts the
  ranks itself (SLURM via submitit) is safe, so everything else is refused before a job starts.
"""

from __future__ import annotations

import fcntl
import logging
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import lightning as L
import torch
from hydra.experimental.callback import Callback as HydraCallback
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig
from torch import nn

log = logging.getLogger(__name__)

# Strategies whose extra ranks are started inside this process (no script re-run): safe in any launcher.
IN_PROCESS_STRATEGY_TAGS = ("spawn", "fork", "notebook")
# The only Hydra launcher whose scheduler starts one task per rank that Lightning then joins.
RANK_STARTING_LAUNCHERS = ("SlurmLauncher",)


class ScaleCallback(Callback):
    """Convert the module to channels_last, enable timm gradient checkpointing, compile the backbone.

    Applied in ``setup`` (stage ``fit``), i.e. before Lightning moves the module to the device and wraps it
    in DDP, so DDP registers the final parameters. ``compile`` uses ``nn.Module.compile`` (in place), so the
    state-dict keys do not gain an ``_orig_mod.`` prefix and saved backbones/checkpoints stay portable.
    """

    def __init__(self, channels_last: bool | str = "auto", compile: bool = False,
                 grad_checkpointing: bool = False, lr_scaling: str = "auto") -> None:
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"scale.channels_last={channels_last!r} must be true, false or auto")
        if lr_scaling not in LR_SCALING_RULES:
            raise ValueError(f"scale.lr_scaling={lr_scaling!r} must be one of {', '.join(LR_SCALING_RULES)}")
        self.channels_last = channels_last
        self.compile = compile
        self.grad_checkpointing = grad_checkpointing
        self.lr_scaling = lr_scaling

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # the test after a fit reuses the same (already converted) module
            return
        model = backbone_model(pl_module)
        # read by ssl_dr.optim.configure_optimizers, which the strategy calls after this hook
        pl_module.lr_scale = lr_scale(self.lr_scaling, trainer.world_size, _optimizer_name(pl_module))
        if trainer.world_size > 1 and trainer.is_global_zero:
            print(f"[ssl_dr] {trainer.world_size} ranks: global batch = {trainer.world_size} x per-rank batch; "
                  f"learning rate x{pl_module.lr_scale:.3g} (scale.lr_scaling={self.lr_scaling})")
        if self.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.wants_channels_last(trainer):
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()

    def wants_channels_last(self, trainer: L.Trainer) -> bool:
        """``auto``: on for CUDA (NHWC feeds the bf16 tensor-core kernels), off on CPU where it rarely helps."""
        if self.channels_last == "auto":
            return isinstance(trainer.accelerator, CUDAAccelerator)
        return bool(self.channels_last)


# How the learning rate follows the global batch (world_size x per-rank batch) under DDP. As in timm's
# training script: linear for SGD-like optimisers (Goyal et al. 2017), square root for adaptive ones
# (Adam/AdamW/Ada*/Lamb), whose effective step already adapts to gradient noise. One rank: factor 1.
LR_SCALING_RULES = ("auto", "linear", "sqrt", "none")
ADAPTIVE_OPTIMIZER_TAGS = ("adam", "ada", "lamb", "lion")


def lr_scale(rule: str, world_size: int, optimizer_name: str = "") -> float:
    """Factor for the configured learning rate when ``world_size`` ranks each take a config-sized batch."""
    if rule == "auto":
        rule = "sqrt" if any(tag in optimizer_name.lower() for tag in ADAPTIVE_OPTIMIZER_TAGS) else "linear"
    if rule == "linear":
        return float(world_size)
    if rule == "sqrt":
        return float(world_size) ** 0.5
    if rule == "none":
        return 1.0
    raise ValueError(f"scale.lr_scaling={rule!r} must be one of {', '.join(LR_SCALING_RULES)}")


def _optimizer_name(pl_module: nn.Module) -> str:
    factory = getattr(pl_module, "optimizer_factory", None)
    return getattr(getattr(factory, "func", factory), "__name__", "")


def backbone_model(pl_module: nn.Module) -> nn.Module:
    """The timm model inside a pretext/classifier module (``module.backbone.model``)."""
    model = getattr(getattr(pl_module, "backbone", None), "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(pl_module).__name__} has no .backbone.model (a timm model); "
                        "ScaleCallback only works with ssl_dr modules built on ssl_dr.backbone.Backbone")
    return model


class GpuSlotError(RuntimeError):
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

    def __init__(self, num_gpus: int, lock_dir: str, wait_s: float | None = 600.0) -> None:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.devices = [d.strip() for d in visible.split(",") if d.strip()] if visible else \
            [str(i) for i in range(num_gpus)]
        if len(self.devices) < num_gpus:
            raise GpuSlotError(f"{num_gpus} parallel GPU jobs asked for, but CUDA_VISIBLE_DEVICES={visible} "
                               f"names only {len(self.devices)} GPUs; lower hydra.launcher.n_jobs")
        self.num_gpus = num_gpus
        self.lock_dir = lock_dir
        self.wait_s = wait_s

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Before any job: more parallel jobs than GPUs would leave jobs waiting for a slot that never comes
        (or failing after ``wait_s``); say so in one line instead."""
        try:
            check_gpu_count(self.num_gpus, torch.cuda.device_count())
        except GpuSlotError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        slot = claim_gpu_slot(Path(self.lock_dir), self.num_gpus, self.wait_s)
        os.environ["CUDA_VISIBLE_DEVICES"] = self.devices[slot]
        log.info("job %s runs on GPU %s (slot %d of %d, process %d)", config.hydra.job.num, self.devices[slot],
                 slot, self.num_gpus, os.getpid())


class ScaleSettingsError(ValueError):
    """Trainer/launcher settings that cannot work together; the message names the key and the fix."""


class MultirunStrategyError(ScaleSettingsError):
    """A multi-process training strategy inside a Hydra multirun whose launcher cannot host it."""


def check_multirun_strategy(cfg: DictConfig, hydra_cfg: DictConfig) -> None:
    """Refuse a script-relaunching strategy (``ddp``, ``fsdp``, ``auto`` on several devices) in a multirun
    unless the launcher starts the ranks itself (SLURM). ``hydra_cfg`` is ``HydraConfig.get()`` (or the
    ``hydra`` node of a config composed with ``return_hydra_config=True``)."""
    if getattr(hydra_cfg.mode, "name", hydra_cfg.mode) != "MULTIRUN":
        return
    trainer = cfg.trainer
    strategy = trainer.get("strategy", "auto")
    processes = _process_count(trainer)
    launcher = str(hydra_cfg.launcher.get("_target_", ""))
    if processes == 1 or not _relaunches_script(strategy) or launcher.endswith(RANK_STARTING_LAUNCHERS):
        return
    raise MultirunStrategyError(
        f"trainer.strategy={_strategy_name(strategy)} on {processes or 'several'} processes inside a Hydra "
        f"multirun with launcher {launcher.rsplit('.', 1)[-1] or 'unknown'}: Lightning re-runs the script once per "
        "rank, so every rank would start the sweep again and write to other folders. Use one of: "
        "hydra/launcher=submitit_slurm (SLURM starts one task per GPU and Lightning joins them); "
        "trainer=gpu hydra/launcher=local_gpus (one GPU per job, several jobs at once on one node); "
        "or run each DDP job on its own, without -m (see docs/scaling.md).")


def check_sync_batchnorm(trainer_cfg: DictConfig, cuda_available: bool | None = None) -> None:
    """Refuse ``trainer.sync_batchnorm`` on CPU processes before anything starts: torch's SyncBatchNorm only
    runs on accelerators and would otherwise fail at the first training step, deep inside a forward pass."""
    if not trainer_cfg.get("sync_batchnorm", False) or _process_count(trainer_cfg) == 1:
        return
    cuda = torch.cuda.is_available() if cuda_available is None else cuda_available
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator == "cpu" or (accelerator == "auto" and not cuda):
        raise ScaleSettingsError(
            "trainer.sync_batchnorm=true needs GPUs (torch's SyncBatchNorm does not run on CPU processes); "
            "for DDP on the CPU add trainer.sync_batchnorm=false (each process then keeps its own BatchNorm "
            "statistics)")


def _strategy_name(strategy: Any) -> str:
    if isinstance(strategy, Mapping):
        return str(strategy.get("_target_", strategy))
    return str(strategy)


def _relaunches_script(strategy: Any) -> bool:
    """True unless the strategy starts its ranks in-process (``ddp_spawn``, ``ddp_fork``, ``ddp_notebook``)."""
    name = _strategy_name(strategy).lower()
    return not any(tag in name for tag in IN_PROCESS_STRATEGY_TAGS)


def _process_count(trainer: DictConfig) -> int | None:
    """Ranks Lightning would start: devices x nodes; ``None`` when it depends on the machine (auto, -1)."""
    devices = trainer.get("devices", "auto")
    nodes = int(trainer.get("num_nodes", 1) or 1)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto" and str(trainer.get("accelerator", "auto")) == "cpu":
            return nodes  # Lightning: auto on CPU = one process
        if text in ("auto", "-1"):
            return None
        devices = [d for d in text.split(",") if d.strip()] if "," in text else int(text)
    if isinstance(devices, int):
        return None if devices == -1 else devices * nodes
    return len(devices) * nodes
