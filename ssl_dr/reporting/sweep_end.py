"""Hydra callback: when a multirun ends, write the report into its folder (``ssl_dr.reporting.writer``) and log it
to W&B.

Registered in ``conf/hydra/default.yaml``, so every sweep (``experiment=paper`` or any ``-m``) ends with
``report.md``/``report.csv``/``qwk_vs_fraction.png`` without a second command.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from ssl_dr.launch.objective import BASIC_SWEEPER
from ssl_dr.reporting.jobs import ReportError
from ssl_dr.reporting.writer import ReportFiles, write_report

log = logging.getLogger(__name__)


class ReportOnSweepEnd(Callback):
    """``on_multirun_end``: report the sweep (incomplete sweeps are reported with their gaps named)."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not str(config.hydra.sweeper.get("_target_", "")).endswith(BASIC_SWEEPER):
            # a hyper-parameter search: one arm, fraction and fold tried N times is no comparison to report
            log.info("hyper-parameter search: best parameters in %s", sweep_dir / "optimization_results.yaml")
            return
        try:
            files = write_report(sweep_dir)
        except ReportError as err:
            log.error("no sweep report: %s", err)
            return
        print(files.markdown.read_text())
        for gap in files.gaps:
            log.warning("%s", gap)
        log.info("sweep report written to %s", files.markdown)
        wandb_cfg = OmegaConf.select(config, "logger.wandb")
        if wandb_cfg is not None:
            _log_to_wandb(files, wandb_cfg, group=f"{config.sweep_name}-{sweep_dir.name}", save_dir=sweep_dir)


def _log_to_wandb(files: ReportFiles, wandb_cfg: DictConfig, group: str, save_dir: Path) -> None:
    """One ``report`` run in the sweep's W&B group (same project, entity and mode as its jobs' runs) holding the
    table, the paired table, the plot, and the QWK-vs-fraction chart as a native W&B line plot over the table
    (one line per arm), so the chart can be restyled and hovered in W&B; its summary lists the finished jobs
    with their fine-tune runs' ids (``report/jobs``)."""
    import wandb

    run = wandb.init(project=wandb_cfg.get("project"), entity=wandb_cfg.get("entity"), group=group,
                     job_type="report", name=f"{group}-report", dir=str(save_dir),
                     mode=wandb_cfg.get("mode") or "offline")
    try:
        table = wandb.Table(dataframe=_missing_as_none(files.table))
        payload = {"report/table": table, "report/qwk_vs_fraction": wandb.Image(str(files.plot)),
                   "report/qwk_vs_fraction_chart": wandb.plot.line(
                       table, x="label_fraction", y="qwk_avg", stroke="arm",
                       title="test QWK (mean over runs) vs label fraction")}
        if len(files.paired):
            payload["report/paired"] = wandb.Table(dataframe=files.paired.astype(
                {"folds": str, "seeds": str, "split_seeds": str}))
        run.log(payload)
        run.summary["report/complete"] = files.complete
        if files.jobs is not None:  # which runs the table is made of: open them by id in the same project
            run.summary["report/jobs"] = _missing_as_none(files.jobs).to_dict(orient="records")
    finally:
        run.finish()


def _missing_as_none(frame: pd.DataFrame) -> pd.DataFrame:
    """pandas' missing values (the Int64 "collapsed" count is <NA> where no prediction was read, NaN run ids of
    older jobs) as None: W&B's JSON encoder cannot serialise pd.NA, and the sweep's end would fail on it."""
    return frame.astype(object).where(frame.notna(), None)
