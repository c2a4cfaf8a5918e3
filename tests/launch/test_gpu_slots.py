"""GPU slots for ``hydra/launcher=local_gpus`` (``ssl_dr.launch.gpu_slots``): each parallel job claims a GPU of its
own, checked against the GPUs that exist."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from ssl_dr.launch.gpu_slots import GpuSlot, GpuSlotError, check_gpu_count, claim_gpu_slot, release_gpu_slots
from ssl_dr.train import CONFIG_DIR
from tests.launch.configs import LAUNCHER_PLUGINS


@pytest.fixture
def slots(tmp_path):
    """A lock folder, and a way to occupy a slot as another process would (a separate open file)."""
    held = []

    def occupy(slot: int) -> None:
        handle = open(tmp_path / f"slot{slot}.lock", "ab")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(handle)

    release_gpu_slots()
    yield tmp_path, occupy
    release_gpu_slots()
    for handle in held:
        handle.close()


def test_claim_takes_the_first_free_slot_and_keeps_it(slots):
    lock_dir, occupy = slots
    occupy(0)
    assert claim_gpu_slot(lock_dir, 3, wait_s=0) == 1
    assert claim_gpu_slot(lock_dir, 3, wait_s=0) == 1  # the same process keeps its GPU for every job


def test_claim_fails_clearly_when_every_gpu_is_busy(slots):
    lock_dir, occupy = slots
    occupy(0)
    with pytest.raises(GpuSlotError, match="stayed busy"):
        claim_gpu_slot(lock_dir, 1, wait_s=0)


def test_gpu_slot_maps_slots_onto_the_visible_gpus(slots, monkeypatch):
    lock_dir, occupy = slots
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    callback = GpuSlot(num_gpus=2, lock_dir=str(lock_dir), wait_s=0)
    occupy(0)
    callback.on_job_start(OmegaConf.create({"hydra": {"job": {"num": 7}}}), task_function=None)
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with pytest.raises(GpuSlotError, match="names only 2 GPUs"):
        GpuSlot(num_gpus=3, lock_dir=str(lock_dir))


@pytest.mark.parametrize(("n_jobs", "available", "message"), [
    (8, 2, "hydra.launcher.n_jobs=8 parallel GPU jobs, but this machine has 2 GPU"),
    (2, 0, "has no GPU that torch can use"),
])
def test_local_gpus_checks_its_jobs_against_the_gpus_that_exist(n_jobs, available, message, monkeypatch, capsys):
    check_gpu_count(2, 2)
    with pytest.raises(GpuSlotError, match=message):
        check_gpu_count(n_jobs, available)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: available)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(SystemExit) as stop:
        GpuSlot(num_gpus=n_jobs, lock_dir="unused").on_multirun_start(OmegaConf.create({}))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_local_gpus_takes_the_node_gpu_count_when_told(monkeypatch):
    """A launching process that cannot see the GPUs (login node) may state them; torch's count is then unused."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    GpuSlot(num_gpus=2, lock_dir="unused", gpus_on_node=2).on_multirun_start(OmegaConf.create({}))
    with pytest.raises(SystemExit):
        GpuSlot(num_gpus=4, lock_dir="unused", gpus_on_node=2).on_multirun_start(OmegaConf.create({}))


APP = '''
import os, hydra

@hydra.main(version_base="1.3", config_path="conf", config_name="app")
def main(cfg):
    with open(os.path.join(os.environ["OUT"], f"{cfg.x}.txt"), "w") as f:
        f.write(f"{os.getpid()} {os.environ['CUDA_VISIBLE_DEVICES']}")

main()
'''


@pytest.mark.slow  # ~15 s idle, 40 s on a busy machine: every worker imports torch + lightning (ssl_dr.training.speed)
def test_local_gpus_launcher_pins_each_worker_to_its_own_gpu(tmp_path):
    """The real launcher file in a tiny app: 4 jobs on 2 'GPUs'; each worker process always sees one GPU."""
    pytest.importorskip(LAUNCHER_PLUGINS["local_gpus"])
    conf = tmp_path / "conf"
    (conf / "hydra" / "launcher").mkdir(parents=True)
    (conf / "hydra" / "launcher" / "local_gpus.yaml").write_text(
        (Path(CONFIG_DIR) / "hydra" / "launcher" / "local_gpus.yaml").read_text())
    (conf / "app.yaml").write_text("x: 0\nhydra:\n  sweep:\n    dir: sweep\n")
    (tmp_path / "app.py").write_text(APP)
    out = tmp_path / "out"
    out.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"} | {"OUT": str(out)}
    result = subprocess.run([sys.executable, "app.py", "-m", "x=0,1,2,3", "hydra/launcher=local_gpus",
                             "hydra.launcher.n_jobs=2", f"hydra.callbacks.gpu_slot.lock_dir={tmp_path / 'locks'}",
                             "hydra.callbacks.gpu_slot.gpus_on_node=2"],  # a 2-GPU node; CI has none
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    seen = [p.read_text().split() for p in sorted(out.glob("*.txt"))]
    assert len(seen) == 4
    gpu_of = {}
    for pid, gpu in seen:
        assert gpu_of.setdefault(pid, gpu) == gpu  # a worker never changes GPU
    assert sorted(set(gpu_of.values())) == ["0", "1"] and len(set(gpu_of.values())) == len(gpu_of)
