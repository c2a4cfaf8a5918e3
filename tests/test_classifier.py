"""The encoder is frozen (no gradients, BatchNorm statistics fixed) only for the warm-up epochs."""

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ssl_dr.backbone import Backbone
from ssl_dr.classifier import DRClassifier


class ModeProbe(L.Callback):
    """Record the encoder's mode and trainability at each training batch."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, bool, bool]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        backbone = pl_module.backbone
        self.seen.append((trainer.current_epoch, backbone.training, next(backbone.parameters()).requires_grad))


def test_encoder_frozen_for_warmup_then_trained_in_train_mode():
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,)))
    loader = DataLoader(data, batch_size=4)
    model = DRClassifier(Backbone("resnet10t"), optimizer=lambda params: torch.optim.SGD(params, lr=0.01),
                         freeze_epochs=1)
    probe = ModeProbe()
    trainer = L.Trainer(max_epochs=3, callbacks=[probe], logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer.fit(model, loader, loader)  # validation each epoch puts modules in eval and back
    assert {(e, t, g) for e, t, g in probe.seen} == {(0, False, False), (1, True, True), (2, True, True)}
