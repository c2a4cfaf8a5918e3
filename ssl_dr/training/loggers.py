"""Loggers per phase, built from ``cfg.logger``: the CSV logger writes into ``<run>/<phase>/``, the
W&B run is named after arm/fraction/fold and typed ``pretext`` or ``finetune`` so a dashboard can
group and filter a sweep; its config carries the run's environment (``ssl_dr.training.environment``).

W&B copies the files of every logged table and artifact into ``$WANDB_DATA_DIR/artifacts/staging`` until a sync
(default: the home folder). While a phase's loggers are open that folder is the run's own ``wandb/`` folder, so a
copied run folder holds every picture its records name (by absolute path: ``ssl_dr.wandb_sync`` points a copy's
records at the copy)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from ssl_dr.training.environment import describe_environment
from ssl_dr.training.wandb_offline import HEADER_BYTES

STAGING_VARIABLE = "WANDB_DATA_DIR"
"""W&B's documented variable for where logged tables' and artifacts' files wait for upload."""
_staged_in: str | None = None
"""The value this module gave ``STAGING_VARIABLE`` for the open phase (None: it left the variable alone)."""

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
        if isinstance(logger, WandbLogger):
            wandb_dir = Path(logger.save_dir or ".") / "wandb"
            stage_in(wandb_dir)
            if logger_cfg.get("mode") == "offline" or logger_cfg.get("offline"):  # online, W&B appends itself
                note_continued_run(wandb_dir, run_id)
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


def stage_in(wandb_dir: Path) -> None:
    """Stage W&B's table and artifact files in ``wandb_dir`` (the run's ``wandb/``) until ``close_loggers``; a
    ``WANDB_DATA_DIR`` the user set wins, and the log says where the files then go."""
    global _staged_in
    if _staged_in is None and (chosen := os.environ.get(STAGING_VARIABLE)):
        log.info("W&B stages tables and artifacts in %s=%s (set in the environment), not in the run folder: copy "
                 "that folder along to `wandb sync` the run elsewhere", STAGING_VARIABLE, chosen)
        return
    _staged_in = str(wandb_dir.resolve())
    os.environ[STAGING_VARIABLE] = _staged_in


def unstage() -> None:
    """Give ``WANDB_DATA_DIR`` back as it was before ``stage_in`` (the sweep's report run stages elsewhere)."""
    global _staged_in
    if _staged_in is not None and os.environ.get(STAGING_VARIABLE) == _staged_in:
        del os.environ[STAGING_VARIABLE]
    _staged_in = None


def note_continued_run(wandb_dir: Path, run_id: str) -> None:
    """Log how to upload a resumed phase's W&B run ``run_id``: offline, W&B cannot append to the killed part's
    folder, so the run goes on under the same id in a new ``offline-run-*`` folder; one ``wandb sync`` of all the
    parts uploads them as one run, in the order they started. A part killed before W&B wrote past its file's
    header holds nothing, and ``wandb sync`` stops at it: it is named to be left out."""
    earlier = sorted(wandb_dir.glob(f"offline-run-*-{run_id}"))
    if not earlier:
        return
    empty = [part for part in earlier if all(f.stat().st_size <= HEADER_BYTES for f in part.glob("*.wandb"))]
    if empty:
        log.warning("W&B part(s) %s of run %s hold no record (killed before W&B wrote to them): leave them out of "
                    "`wandb sync`, which stops at such a part", " ".join(p.name for p in empty), run_id)
    kept = " ".join(str(part) for part in earlier if part not in empty)
    log.info("W&B run %s continues in a new offline folder (W&B cannot append to an earlier one)%s", run_id,
             f"; upload its parts together: wandb sync {kept} <this part, named when it closes>" if kept else "")


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
                log.info(f"W&B offline run: {offline}; upload with: wandb sync {offline} (from a copy of the run "
                         "folder: python -m ssl_dr.wandb_sync <copy> first)")
    unstage()
