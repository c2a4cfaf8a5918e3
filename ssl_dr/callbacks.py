"""Lightning callbacks of our own (the rest — checkpoints, LR monitor, progress bar — are Lightning's)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss; continuing would only train on garbage."""


class FiniteLossGuard(Callback):
    """Stop at the first NaN or infinite training loss, naming the step and the usual suspects."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor) and not torch.isfinite(loss).all():
            lrs = [group["lr"] for opt in trainer.optimizers for group in opt.param_groups]
            raise NonFiniteLossError(
                f"loss became {loss.item()} at epoch {trainer.current_epoch}, step {trainer.global_step} "
                f"(batch {batch_idx}); learning rate {lrs}, precision {trainer.precision}. Likely causes: a "
                "learning rate too high for this batch size (lower the optimizer lr) or fp16 overflow "
                "(use precision=bf16-mixed or 32-true).")
