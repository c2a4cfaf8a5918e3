"""A NaN loss stops training with a message naming the step and the likely cause."""

import lightning as L
import pytest
import torch
from torch import nn

from ssl_dr.training.callbacks import FiniteLossGuard, NonFiniteLossError, StepBudgetProgressBar


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
