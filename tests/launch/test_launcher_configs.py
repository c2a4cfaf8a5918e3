"""Every ``conf/hydra/launcher`` config composes and instantiates with the real config: one job per GPU at a time
(``local_gpus``), one task and one GPU per rank (``submitit_slurm``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ssl_dr.launch.gpu_slots import GpuSlot
from ssl_dr.train import CONFIG_DIR
from tests.launch.configs import LAUNCHER_PLUGINS, LAUNCHERS, compose_train


@pytest.mark.parametrize("name", LAUNCHERS)
def test_every_launcher_config_composes_and_instantiates(name):
    pytest.importorskip(LAUNCHER_PLUGINS[name], reason="pip install -e '.[launchers]'")
    cfg = compose_train("experiment=paper", "trainer=gpu", f"hydra/launcher={name}", hydra=True)
    launcher = instantiate(cfg.hydra.launcher)
    assert isinstance(launcher, get_class(cfg.hydra.launcher._target_))


def test_local_gpus_runs_one_job_per_gpu_at_a_time():
    pytest.importorskip(LAUNCHER_PLUGINS["local_gpus"])
    cfg = compose_train("experiment=paper", "trainer=gpu", "hydra/launcher=local_gpus", "hydra.launcher.n_jobs=4",
                        hydra=True)
    assert cfg.hydra.launcher.n_jobs == 4 and int(cfg.hydra.launcher.batch_size) == 1
    slot = instantiate(cfg.hydra.callbacks.gpu_slot)
    assert isinstance(slot, GpuSlot) and slot.num_gpus == 4
    assert "report" in cfg.hydra.callbacks  # the sweep report callback is kept


def test_submitit_slurm_asks_one_task_and_one_gpu_per_rank():
    cfg = compose_train("trainer=ddp", "trainer.devices=4", "hydra/launcher=submitit_slurm",
                        "hydra.launcher.partition=gpu", hydra=True)
    launcher = cfg.hydra.launcher
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 1)
    assert launcher.partition == "gpu" and launcher._target_.endswith("SlurmLauncher")


def test_submitit_slurm_file_is_complete_without_the_plugin_schema():
    """Our file shadows the plugin's config of the same name; it must not rely on Hydra merging the two."""
    submitit = pytest.importorskip("hydra_plugins.hydra_submitit_launcher.config")
    ours = OmegaConf.load(Path(CONFIG_DIR) / "hydra" / "launcher" / "submitit_slurm.yaml")
    assert set(OmegaConf.structured(submitit.SlurmQueueConf)) <= set(ours)
