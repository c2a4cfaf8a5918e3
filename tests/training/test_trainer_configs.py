"""Every ``conf/trainer`` config builds a Lightning trainer with the real config; the GPU and DDP settings say what
they promise."""

from __future__ import annotations

import pytest
import torch

from tests.launch.configs import TRAINERS, build_trainer, compose_train


@pytest.mark.parametrize("name", TRAINERS)
def test_every_trainer_config_builds_a_trainer(name, tmp_path):
    """gpu/ddp are built with accelerator=cpu here: the point is that Lightning accepts every key."""
    cfg = compose_train(f"trainer={name}")
    trainer = build_trainer(cfg, tmp_path, accelerator="cpu")
    assert (trainer.max_steps, trainer.val_check_interval) == (cfg.trainer.max_steps, cfg.trainer.val_check_interval)


def test_gpu_and_ddp_settings():
    gpu = compose_train("trainer=gpu").trainer
    assert (gpu.accelerator, gpu.devices, gpu.precision) == ("gpu", 1, "bf16-mixed")
    ddp = compose_train("trainer=ddp").trainer
    assert (ddp.strategy, ddp.devices, ddp.precision) == ("ddp_find_unused_parameters_true", 2, "bf16-mixed")
    assert ddp.sync_batchnorm and ddp.use_distributed_sampler
    assert compose_train("trainer=ddp", "trainer.devices=4").trainer.devices == 4


def test_ddp_trainer_on_cpu_processes(tmp_path):
    trainer = build_trainer(compose_train("trainer=ddp", "trainer.devices=2"), tmp_path, accelerator="cpu",
                            precision="32-true")
    assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_trainer_on_a_gpu(tmp_path):
    trainer = build_trainer(compose_train("trainer=gpu"), tmp_path)
    assert trainer.num_devices == 1 and trainer.precision == "bf16-mixed"
