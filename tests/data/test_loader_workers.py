"""``data.num_workers=auto``: no workers on the CPU (as fast as any count on 2 cores), the CPUs of each GPU
process on a GPU, with pinned memory, persistent workers and a deeper prefetch; the data module resolves it
from its trainer."""

from __future__ import annotations

from pathlib import Path

import cv2
import lightning as L
import numpy as np
import pytest

from ssl_dr.data.datamodule import GPU_WORKERS_CAP, FundusDataModule, loader_settings, resolve_num_workers
from ssl_dr.data.records import Record
from ssl_dr.data.transforms import AugmentConfig, build_transform
from ssl_dr.errors import DataError
from tests.launch.configs import compose_train


def test_auto_on_a_gpu_uses_the_cpus_of_each_process_less_one_capped():
    assert resolve_num_workers("auto", on_gpu=True, processes=1, cpus=16) == GPU_WORKERS_CAP == 8
    assert resolve_num_workers("auto", on_gpu=True, processes=2, cpus=16) == 7  # DDP, 2 ranks on 16 cores
    assert resolve_num_workers("auto", on_gpu=True, processes=8, cpus=16) == 1
    assert resolve_num_workers("auto", on_gpu=True, processes=1, cpus=2) == 1  # never 0 on a GPU


def test_auto_on_the_cpu_loads_in_the_training_process():
    assert resolve_num_workers("auto", on_gpu=False, processes=1, cpus=2) == 0
    assert resolve_num_workers("auto", on_gpu=False, processes=1, cpus=64) == 0


def test_a_count_is_kept_and_a_bad_value_names_the_key():
    assert resolve_num_workers(3, on_gpu=True, processes=1, cpus=16) == 3
    assert resolve_num_workers(0, on_gpu=True, processes=1, cpus=16) == 0
    for bad in ("four", -1, True, 2.5):
        with pytest.raises(DataError, match=r"^data\.num_workers=.* must be auto or a whole number >= 0"):
            resolve_num_workers(bad, on_gpu=False, processes=1)


def test_a_gpu_loader_pins_memory_keeps_its_workers_and_prefetches_deeper():
    assert loader_settings("auto", on_gpu=True, processes=1, cpus=16) == {
        "num_workers": 8, "persistent_workers": True, "pin_memory": True, "prefetch_factor": 4}
    assert loader_settings("auto", on_gpu=False, processes=1, cpus=2) == {
        "num_workers": 0, "persistent_workers": False, "pin_memory": False}
    assert loader_settings(2, on_gpu=False, processes=1)["prefetch_factor"] == 2


@pytest.mark.parametrize(("trainer", "processes"), [("gpu", 1), ("ddp", 2)])
def test_gpu_trainer_configs_get_loader_workers_by_default(trainer, processes):
    cfg = compose_train(f"trainer={trainer}")
    assert cfg.trainer.devices == processes
    assert resolve_num_workers(cfg.data.num_workers, on_gpu=True, processes=cfg.trainer.devices, cpus=16) > 0
    cpu = compose_train("trainer=cpu")
    assert resolve_num_workers(cpu.data.num_workers, on_gpu=False, processes=1) == 0


def _datamodule(tmp_path: Path, num_workers) -> FundusDataModule:
    records = []
    for i in range(4):
        path = tmp_path / f"eye{i}.png"
        cv2.imwrite(str(path), np.full((16, 16, 3), 40 * i, np.uint8))
        records.append(Record(f"eye{i}", path, i % 2))
    transform = build_transform("eval", 16, (0.5,) * 3, (0.5,) * 3, AugmentConfig(), seed=0)
    return FundusDataModule(records, records[:2], train_transform=transform, eval_transform=transform,
                            with_grades=True, batch_size=2, seed=0, num_workers=num_workers)


def test_the_data_module_resolves_auto_from_its_trainer(tmp_path):
    data = _datamodule(tmp_path, "auto")
    data.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    loader = data.train_dataloader()
    assert (loader.num_workers, loader.pin_memory) == (0, False)
    counted = _datamodule(tmp_path, 2)
    counted.trainer = data.trainer
    loader = counted.val_dataloader()
    assert (loader.num_workers, loader.persistent_workers, loader.prefetch_factor) == (2, True, 2)
    assert len(list(loader)) == 1  # the workers really load


def test_a_bad_worker_count_fails_when_the_data_module_is_made(tmp_path):
    with pytest.raises(DataError, match="data.num_workers='many'"):
        _datamodule(tmp_path, "many")
