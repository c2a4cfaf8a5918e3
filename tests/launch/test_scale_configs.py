"""Scale-out: every trainer and launcher config composes with the real config; the scale callback changes
the model as configured; parallel jobs get a GPU each; DDP inside a local multirun is refused. (The Docker
image: tests/test_docker.py.)"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ssl_dr.launch.gpu_slots import GpuSlot, GpuSlotError, check_gpu_count, claim_gpu_slot, release_gpu_slots
from ssl_dr.launch.guards import MultirunStrategyError, check_multirun_strategy
from ssl_dr.models.backbone import Backbone
from ssl_dr.train import CONFIG_DIR
from ssl_dr.training.speed import ScaleCallback

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


# --- trainer configs -------------------------------------------------------------------------------------

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


# --- launcher configs ------------------------------------------------------------------------------------

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


# --- GPU slots (hydra/launcher=local_gpus) ---------------------------------------------------------------

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


# --- scale callback (channels_last / compile / gradient checkpointing) ------------------------------------

class Tiny(nn.Module):
    """The shape the callback expects of our modules: ``.backbone`` is an ssl_dr Backbone."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone("resnet10t")  # random init, nothing downloaded

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(images)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when other jobs load the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cpu_trainer(tmp_path: Path) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, default_root_dir=str(tmp_path))


def conv_weights(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.dim() == 4]


def test_channels_last_converts_the_model_and_keeps_its_outputs(tmp_path):
    module = Tiny().eval()
    images = torch.randn(2, 3, 32, 32)
    before = module(images)
    ScaleCallback(channels_last=True).setup(cpu_trainer(tmp_path), module, "fit")
    assert all(w.is_contiguous(memory_format=torch.channels_last) for w in conv_weights(module))
    assert torch.allclose(module(images), before, atol=1e-5)


def test_channels_last_auto_is_off_on_cpu_and_test_stage_is_untouched(tmp_path):
    module = Tiny()
    ScaleCallback(channels_last="auto").setup(cpu_trainer(tmp_path), module, "fit")
    ScaleCallback(channels_last=True).setup(cpu_trainer(tmp_path), module, "test")
    assert all(w.is_contiguous() for w in conv_weights(module))  # still NCHW


def test_grad_checkpointing_recomputes_blocks_in_backward(tmp_path):
    def forward_calls(module: Tiny) -> int:
        calls = []
        # a pre-hook: recomputation stops early, once it has rebuilt what backward needs
        handle = module.backbone.model.layer2[0].register_forward_pre_hook(lambda *_: calls.append(1))
        module(torch.randn(2, 3, 32, 32)).sum().backward()
        handle.remove()
        return len(calls)

    plain, checkpointed = Tiny(), Tiny()
    ScaleCallback(channels_last=False, grad_checkpointing=True).setup(cpu_trainer(tmp_path), checkpointed, "fit")
    assert forward_calls(plain) == 1 and forward_calls(checkpointed) == 2


def test_compile_is_in_place_so_weight_files_keep_their_keys(tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda fn, *a, **k: compiled.append(fn) or fn)  # no real compile on CPU
    module = Tiny()
    keys = list(module.backbone.model.state_dict())
    ScaleCallback(channels_last=False, compile=True).setup(cpu_trainer(tmp_path), module, "fit")
    assert len(compiled) == 1 and list(module.backbone.model.state_dict()) == keys


def test_scale_group_and_bad_values():
    callback = instantiate(compose_train().scale)
    assert isinstance(callback, ScaleCallback)
    assert (callback.channels_last, callback.compile, callback.grad_checkpointing) == ("auto", False, False)
    with pytest.raises(ValueError, match="channels_last"):
        ScaleCallback(channels_last="yes")
    with pytest.raises(TypeError, match="backbone"):
        ScaleCallback(channels_last=True).setup(None, nn.Linear(2, 2), "fit")


# --- multirun + DDP guard --------------------------------------------------------------------------------

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


def test_config_dir_is_found_from_the_source_tree():
    """A checkout reads conf/ beside the package (an installed wheel reads ssl_dr/conf: tests/test_wheel.py and
    tests/test_docker.py)."""
    assert Path(CONFIG_DIR) == ROOT / "conf" and not (ROOT / "ssl_dr" / "conf").exists()
