"""Trainer and launcher settings that cannot work together, refused before a job starts.

``check_multirun_strategy``: Lightning's ``ddp`` re-runs the script once per rank; inside a Hydra multirun that
restarts the whole sweep in every rank and scatters the output folders. Only a launcher that starts the ranks
itself (SLURM via submitit) is safe, so everything else is refused. ``check_sync_batchnorm``: torch's
SyncBatchNorm only runs on accelerators. Torch-free unless it has to ask whether CUDA exists.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig

from ssl_dr.errors import ConfigError

# Strategies whose extra ranks are started inside this process (no script re-run): safe in any launcher.
IN_PROCESS_STRATEGY_TAGS = ("spawn", "fork", "notebook")
# The only Hydra launcher whose scheduler starts one task per rank that Lightning then joins.
RANK_STARTING_LAUNCHERS = ("SlurmLauncher",)


class DistributedSettingsError(ConfigError):
    """Multi-process (DDP) trainer and launcher settings that cannot work together; names the key and the fix."""


class MultirunStrategyError(DistributedSettingsError):
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
    if cuda_available is None:
        import torch  # only when the setting needs the answer

        cuda_available = torch.cuda.is_available()
    cuda = cuda_available
    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator == "cpu" or (accelerator == "auto" and not cuda):
        raise DistributedSettingsError(
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
