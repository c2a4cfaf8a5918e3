"""Loggers per phase, built from ``cfg.logger``: the CSV logger writes into ``<run>/<phase>/``, the
W&B run is named after arm/fraction/fold and typed ``pretext`` or ``finetune`` so a dashboard can
group and filter a sweep; its config carries the run's environment (``ssl_dr.training.environment``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from ssl_dr.training.environment import describe_environment

log = logging.getLogger(__name__)


def build_loggers(cfg: DictConfig, phase: str, run_name: str, run_id: str) -> list[Logger]:
    """Instantiate every logger in ``cfg.logger`` for one phase and give it the run's config.

    ``run_id`` is stable for a phase (same run folder / same pretext key), so a resumed phase continues
    its W&B run (``resume="allow"``) instead of starting a second one."""
    loggers: list[Logger] = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if logger_cfg is None:
            continue
        cls = get_class(logger_cfg._target_)
        extra: dict[str, Any] = {}
        if issubclass(cls, CSVLogger):
            extra = {"name": phase, "version": ""}
        elif issubclass(cls, WandbLogger):
            extra = {"name": run_name, "job_type": phase, "id": run_id, "resume": "allow",
                     **({"group": group} if (group := sweep_group(cfg)) else {})}
        logger = instantiate(logger_cfg, **extra)
        hparams = OmegaConf.to_container(cfg, resolve=True)
        if issubclass(cls, WandbLogger):  # a dashboard can then group or filter runs by their environment
            hparams = {**hparams, "environment": describe_environment(cfg)}
        logger.log_hyperparams(hparams)
        loggers.append(logger)
    return loggers


def sweep_group(cfg: DictConfig) -> str | None:
    """``<sweep_name>-<sweep folder>`` inside a Hydra multirun (all jobs of one sweep share it), else None."""
    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None
    return f"{cfg.sweep_name}-{Path(hydra_cfg.sweep.dir).name}"


def close_loggers(loggers: list[Logger], failed: bool) -> None:
    """Finish W&B runs so the next phase (or sweep job) starts a new one, also after a failure; an offline run's
    folder and its ``wandb sync`` command go into the log."""
    for logger in loggers:
        logger.finalize("failed" if failed else "success")
        if isinstance(logger, WandbLogger):
            import wandb

            offline = wandb.run.sync_dir if wandb.run is not None and wandb.run.offline else None
            wandb.finish(exit_code=1 if failed else 0)
            if offline:  # the run's log then ends with where its W&B run is and how to upload it
                log.info(f"W&B offline run: {offline}; upload with: wandb sync {offline}")
