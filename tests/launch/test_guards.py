"""The multirun guard (``ssl_dr.launch.guards``): DDP inside a local multirun is refused before the first job."""

from __future__ import annotations

import pytest

from ssl_dr.launch.guards import MultirunStrategyError, check_multirun_strategy
from tests.launch.configs import BASIC_LAUNCHER, LAUNCHER_PLUGINS, compose_train


def guard(*overrides: str) -> None:
    cfg = compose_train(*overrides, hydra=True)
    check_multirun_strategy(cfg, cfg.hydra)


def test_guard_refuses_ddp_in_a_basic_multirun():
    cfg = compose_train("experiment=paper", "trainer=ddp", hydra=True)
    assert cfg.hydra.launcher._target_ == BASIC_LAUNCHER
    with pytest.raises(MultirunStrategyError, match="submitit_slurm") as err:  # the message names the way out
        check_multirun_strategy(cfg, cfg.hydra)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("overrides", [
    ["trainer=ddp", "trainer.devices=[2,3]"],           # ddp on a list of devices
    ["trainer=gpu", "trainer.devices=-1"],              # strategy auto on all GPUs = ddp
    ["trainer=gpu", "trainer.devices='0,1'"],           # Lightning's device string
    ["trainer=ddp", "trainer.devices=1", "trainer.num_nodes=2"],
])
def test_guard_refuses_other_multi_process_settings(overrides):
    with pytest.raises(MultirunStrategyError):
        guard("experiment=paper", *overrides)


@pytest.mark.parametrize("overrides", [
    ["experiment=rotation", "trainer=ddp"],                      # a single run: Lightning handles Hydra
    ["experiment=paper", "trainer=gpu"],                         # one GPU per job
    ["experiment=paper", "trainer=ddp", "trainer.devices=1"],
    ["experiment=paper", "trainer=ddp", "trainer.strategy=ddp_spawn"],  # ranks started in-process
    ["experiment=paper", "trainer=ddp", "hydra/launcher=submitit_slurm"],  # SLURM starts the ranks
    ["experiment=paper"],                                        # the CPU default
])
def test_guard_passes_everything_else(overrides):
    guard(*overrides)


def test_guard_refuses_ddp_with_the_local_gpus_launcher():
    pytest.importorskip(LAUNCHER_PLUGINS["local_gpus"])
    with pytest.raises(MultirunStrategyError, match="JoblibLauncher"):
        guard("experiment=paper", "trainer=ddp", "hydra/launcher=local_gpus")
