"""A NaN loss stops training with a message naming the step and the likely cause."""

import lightning as L
import pytest
import torch
from torch import nn

from ssl_dr.training.callbacks import FiniteLossGuard, NonFiniteLossError


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
