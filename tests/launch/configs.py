"""What the config tests share: the real ``train.yaml`` composed as the CLI would, the trainer and launcher configs
it offers, and a trainer built from one."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from ssl_dr.train import CONFIG_DIR

ROOT = Path(CONFIG_DIR).parent
TRAINERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "trainer").glob("*.yaml"))
LAUNCHERS = sorted(p.stem for p in (Path(CONFIG_DIR) / "hydra" / "launcher").glob("*.yaml"))
# the Hydra plugin each launcher config builds on (installed by the `launchers` extra)
LAUNCHER_PLUGINS = {"local_gpus": "hydra_plugins.hydra_joblib_launcher",
                    "submitit_slurm": "hydra_plugins.hydra_submitit_launcher"}
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def compose_train(*overrides: str, hydra: bool = False) -> DictConfig:
    """The real ``train.yaml`` (with the ``scale`` group, appended while ``train.yaml`` does not list it yet)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        base = compose(config_name="train")
        scale = [] if "scale" in base else ["+scale=default"]
        return compose(config_name="train", overrides=[*scale, *overrides], return_hydra_config=hydra)


def build_trainer(cfg: DictConfig, tmp_path: Path, **overrides) -> L.Trainer:
    return instantiate(cfg.trainer, default_root_dir=str(tmp_path), logger=False, enable_checkpointing=False,
                       enable_progress_bar=False, **overrides)


