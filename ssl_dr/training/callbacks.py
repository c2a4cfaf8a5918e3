"""Lightning callbacks of our own (the rest — checkpoints, LR monitor — are Lightning's)."""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar

from ssl_dr.errors import UserError

log = logging.getLogger(__name__)


class NonFiniteLossError(UserError, RuntimeError):
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


class RngStateCallback(Callback):
    """Checkpoints carry the global RNG states, so training continues with the same random stream.

    A resumed run ends with the same metrics as an uninterrupted one because every random draw of training
    comes from torch's global generators (augmentation seeds included, see ``FundusDataset``; on a GPU, timm's
    drop path and anything else drawn on the device use the CUDA generators) and this callback stores and
    restores them (and numpy's and Python's) in checkpoints.

    CUDA states are saved only once CUDA is initialised: before that nothing has drawn from them (they are as
    seeded, and the resumed run seeds them alike), and reading them would create CUDA contexts in a CPU run.
    Restoring: a CPU checkpoint on a GPU leaves the CUDA generators as seeded; a GPU checkpoint on a machine
    without CUDA restores the rest and logs the CUDA states it skips; with another device count, device ``i``
    gets the saved state ``i`` for the devices both have, and a warning names the counts. Under DDP the
    checkpoint holds rank 0's states, which every rank restores (as for the CPU generator).
    """

    def state_dict(self) -> dict[str, Any]:
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64)),
                 "numpy_rest": [name, int(pos), int(has_gauss), float(gauss)], "python": random.getstate()}
        if torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        name, pos, has_gauss, gauss = state_dict["numpy_rest"]
        np.random.set_state((name, state_dict["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state_dict["python"]
        random.setstate((version, tuple(internal), gauss_next))
        saved = state_dict.get("cuda") or []
        if not saved:
            return
        if not torch.cuda.is_available():
            log.info("The checkpoint carries the CUDA RNG states of %d device(s); without CUDA here they are "
                     "skipped (CPU, numpy and Python states restored).", len(saved))
            return
        devices = torch.cuda.device_count()
        if devices != len(saved):
            log.warning("The checkpoint carries the CUDA RNG states of %d device(s), this machine has %d: devices "
                        "0-%d get theirs, any others keep their seeded state.", len(saved), devices,
                        min(devices, len(saved)) - 1)
        torch.cuda.set_rng_state_all(saved[:devices])


class StepBudgetProgressBar(RichProgressBar):
    """Rich's progress bar, counting a step-budgeted fit in optimiser steps of its budget.

    The fine-tune trains ``trainer.max_steps`` steps with no epoch limit (``max_epochs=-1``), where Lightning's
    bar reads "Epoch 9/-2" and restarts at every pass over the data: no sign of how far the budget is. Here the
    training bar's total is the budget and its position the optimiser step, across epochs; the epoch stays in
    the description. A fit bounded by epochs (the pretext) keeps Lightning's bar unchanged.
    """

    def _budget(self) -> int | None:
        trainer = self.trainer
        unbounded = trainer.max_epochs is None or trainer.max_epochs < 0
        return trainer.max_steps if unbounded and trainer.max_steps and trainer.max_steps > 0 else None

    @property
    def total_train_batches(self) -> int | float:
        budget = self._budget()
        return budget if budget is not None else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        budget = self._budget()
        if budget is None:
            return super()._get_train_description(current_epoch)
        description = f"Steps (epoch {current_epoch})"
        return f"{description:{len(self.validation_description)}}"  # as Lightning pads it, against flicker

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._budget() is not None:  # Lightning set the batch index of this epoch; the budget's step instead
            self._update(self.train_progress_bar_id, trainer.global_step)
