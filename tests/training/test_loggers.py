"""W&B runs of one sweep share a group; single runs are grouped by arm; phases are typed."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from omegaconf import open_dict

from ssl_dr.train import CONFIG_DIR
from ssl_dr.training.loggers import build_loggers, close_loggers, sweep_group


def _hydra_cfg(tmp_path, mode: RunMode, *overrides: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", return_hydra_config=True,
                      overrides=[f"paths.root_dir={tmp_path}", *overrides])
    with open_dict(cfg):
        cfg.hydra.mode = mode
        cfg.hydra.sweep.dir = str(tmp_path / "outputs" / "paper" / "multiruns" / "2026-01-01_00-00-00_000001")
        cfg.hydra.runtime.output_dir = str(tmp_path / "job")
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_multirun_jobs_share_the_sweep_group(tmp_path):
    cfg = _hydra_cfg(tmp_path, RunMode.MULTIRUN, "experiment=paper")
    assert sweep_group(cfg) == "paper-2026-01-01_00-00-00_000001"
    loggers = build_loggers(cfg, "finetune", "rotation-frac0.1-fold2", "rotation-0123456789ab")
    try:
        wandb_logger = next(lg for lg in loggers if isinstance(lg, WandbLogger))
        run = wandb_logger.experiment
        assert (run.group, run.job_type, run.name) == ("paper-2026-01-01_00-00-00_000001", "finetune",
                                                        "rotation-frac0.1-fold2")
        assert run.id == "rotation-0123456789ab"  # stable per run folder: a resumed phase continues this run
        assert run.config["arm"] == "rotation" and run.config["data"]["fold"] == 0
        assert run.config["environment"]["summary"].startswith("torch ")  # what the run ran on
        assert next(lg for lg in loggers if isinstance(lg, CSVLogger)).log_dir.rstrip("/").endswith("job/finetune")
    finally:
        close_loggers(loggers, failed=False)


def test_single_run_is_not_a_sweep_group(tmp_path):
    assert sweep_group(_hydra_cfg(tmp_path, RunMode.RUN)) is None
