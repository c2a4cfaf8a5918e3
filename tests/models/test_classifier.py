"""The encoder is frozen (no gradients, BatchNorm statistics fixed) only for the first optimiser steps."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssl_dr.models.backbone import Backbone
from ssl_dr.models.classifier import DRClassifier


class ModeProbe(L.Callback):
    """Record the encoder's mode and trainability at each training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        backbone = pl_module.backbone
        self.seen.append((trainer.global_step, backbone.training, next(backbone.parameters()).requires_grad))


def test_encoder_frozen_for_the_first_steps_then_trained_in_train_mode():
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    loader = DataLoader(data, batch_size=4)
    model = DRClassifier(Backbone("resnet10t"), optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
                         freeze_steps=3)
    probe = ModeProbe()
    trainer = L.Trainer(max_steps=6, val_check_interval=2, check_val_every_n_epoch=None, callbacks=[probe],
                        logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader, loader)  # validation every 2 steps puts modules in eval and back
    # global_step after the batch: steps 0-2 frozen, then trained (step 3 crosses an epoch boundary)
    assert probe.seen == [(1, False, False), (2, False, False), (3, False, False),
                          (4, True, True), (5, True, True), (6, True, True)]
