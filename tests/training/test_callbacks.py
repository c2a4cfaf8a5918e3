"""A NaN loss stops training with a message naming the step and the likely cause; the progress bar of a step
budget; checkpoints carry the RNG states, CUDA's included."""

import logging
import random

import lightning as L
import numpy as np
import pytest
import torch
from timm.layers import DropPath
from torch import nn

from ssl_dr.training.callbacks import FiniteLossGuard, NonFiniteLossError, RngStateCallback, StepBudgetProgressBar


class Diverging(L.LightningModule):
    """Finite loss for two steps, then NaN."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).mean()
        return loss * float("nan") if self.global_step >= 2 else loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 2)), batch_size=2)


def test_nan_loss_is_stopped_at_its_step():
    trainer = L.Trainer(max_epochs=1, callbacks=[FiniteLossGuard()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match=r"loss became nan at epoch 0, step 3 \(batch 2\).*learning rate"):
        trainer.fit(Diverging())


def test_finite_training_is_untouched():
    module = Diverging()
    module.training_step = lambda batch, batch_idx: module.layer(batch[0]).mean()
    trainer = L.Trainer(max_steps=4, callbacks=[FiniteLossGuard()], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module)
    assert trainer.global_step == 4


class _BarProbe(L.Callback):
    """Reads the training bar after every step, once the progress bar has drawn it."""

    def __init__(self, bar: StepBudgetProgressBar) -> None:
        self.bar, self.seen = bar, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        task = self.bar.progress.tasks[self.bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total, task.description.strip()))


def test_budget_progress_bar_counts_the_steps_of_the_budget_across_epochs():
    """A step-budgeted fit (max_epochs=-1, as the fine-tune) read 'Epoch 2/-2' and restarted every epoch."""
    module = Diverging()
    module.training_step = lambda batch, batch_idx: module.layer(batch[0]).mean()
    bar = StepBudgetProgressBar()
    probe = _BarProbe(bar)
    trainer = L.Trainer(max_steps=7, max_epochs=-1, limit_train_batches=3, callbacks=[bar, probe], logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module)
    assert [completed for completed, _, _ in probe.seen] == list(range(1, 8))  # 3 epochs, one count
    assert {total for _, total, _ in probe.seen} == {7}
    assert probe.seen[-1][2] == "Steps (epoch 2)" and not any("-2" in d for _, _, d in probe.seen)


def test_epoch_bounded_fit_keeps_lightnings_bar():
    module = Diverging()
    module.training_step = lambda batch, batch_idx: module.layer(batch[0]).mean()
    bar = StepBudgetProgressBar()
    probe = _BarProbe(bar)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=3, callbacks=[bar, probe], logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(module)
    assert [completed for completed, _, _ in probe.seen] == [1, 2, 3, 1, 2, 3]
    assert probe.seen[-1][2] == "Epoch 1/1"


def _draws() -> tuple:
    """One draw of each global generator, drop path's (timm) included."""
    mask = DropPath(0.5).train()(torch.ones(16, 1))
    return torch.rand(3).tolist(), mask.flatten().tolist(), np.random.rand(3).tolist(), random.random()


def test_rng_states_round_trip_on_the_cpu():
    callback = RngStateCallback()
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    _draws()
    state = callback.state_dict()
    first = _draws()
    assert _draws() != first  # the generators moved on
    callback.load_state_dict(state)
    assert _draws() == first


class FakeCuda:
    """torch.cuda's RNG functions as seen by the callback, recording what it asks for (the wiring only: the real
    round trip is test_cuda_rng_states_round_trip_on_a_gpu)."""

    def __init__(self, monkeypatch, initialised: bool, devices: int) -> None:
        self.initialised, self.restored = initialised, []
        self.states = [torch.full((16,), i, dtype=torch.uint8) for i in range(devices)]
        monkeypatch.setattr(torch.cuda, "is_initialized", lambda: initialised)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: devices > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: devices)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self.get_rng_state_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.restored.append)

    def get_rng_state_all(self) -> list[torch.Tensor]:
        assert self.initialised, "read the CUDA states before CUDA was initialised (it creates CUDA contexts)"
        return [s.clone() for s in self.states]


def test_cuda_states_are_saved_once_cuda_is_initialised_and_restored_on_every_device(monkeypatch):
    cuda = FakeCuda(monkeypatch, initialised=True, devices=2)
    state = RngStateCallback().state_dict()
    assert [s.tolist() for s in state["cuda"]] == [s.tolist() for s in cuda.states]
    RngStateCallback().load_state_dict(state)
    assert len(cuda.restored) == 1 and [s.tolist() for s in cuda.restored[0]] == [s.tolist() for s in cuda.states]


def test_a_cpu_run_on_a_gpu_machine_saves_no_cuda_state_and_its_checkpoint_leaves_cuda_as_seeded(monkeypatch):
    """Reading the states would create CUDA contexts in a CPU run; its CUDA generators drew nothing."""
    cuda = FakeCuda(monkeypatch, initialised=False, devices=2)
    state = RngStateCallback().state_dict()
    assert "cuda" not in state
    RngStateCallback().load_state_dict(state)
    assert cuda.restored == []


def test_a_gpu_checkpoint_resumes_without_cuda_restoring_the_rest_and_saying_so(monkeypatch, caplog):
    FakeCuda(monkeypatch, initialised=True, devices=2)
    state = RngStateCallback().state_dict()
    first = _draws()
    cuda = FakeCuda(monkeypatch, initialised=False, devices=0)
    with caplog.at_level(logging.INFO, logger="ssl_dr.training.callbacks"):
        RngStateCallback().load_state_dict(state)
    assert _draws() == first and cuda.restored == []
    (line,) = [r.getMessage() for r in caplog.records]
    assert "CUDA RNG states of 2 device(s)" in line and "skipped" in line


@pytest.mark.parametrize("devices, restored", [(1, [0]), (3, [0, 1])])
def test_another_device_count_restores_the_devices_both_have_and_warns(monkeypatch, caplog, devices, restored):
    FakeCuda(monkeypatch, initialised=True, devices=2)
    state = RngStateCallback().state_dict()
    cuda = FakeCuda(monkeypatch, initialised=True, devices=devices)
    with caplog.at_level(logging.WARNING, logger="ssl_dr.training.callbacks"):
        RngStateCallback().load_state_dict(state)
    assert [s[0].item() for s in cuda.restored[0]] == restored
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"states of 2 device(s), this machine has {devices}" in line


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rng_states_round_trip_on_a_gpu():
    """Drop path on the GPU draws from the CUDA generator: a resumed ViT drew other masks before (issue 30)."""
    torch.cuda.manual_seed_all(0)
    ones = torch.ones(64, 1, device="cuda")
    drop = DropPath(0.5).train()
    drop(ones)
    state = RngStateCallback().state_dict()
    assert len(state["cuda"]) == torch.cuda.device_count()
    first = drop(ones).flatten().tolist(), torch.rand(3, device="cuda").tolist()
    assert (drop(ones).flatten().tolist(), torch.rand(3, device="cuda").tolist()) != first
    RngStateCallback().load_state_dict(state)
    assert (drop(ones).flatten().tolist(), torch.rand(3, device="cuda").tolist()) == first
