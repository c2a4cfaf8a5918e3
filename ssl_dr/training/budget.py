"""The fine-tune's training budget: a number of optimiser steps, the same for every arm and label fraction.

Why steps and not epochs: an epoch at 5 % of the labels is 1/20 of an epoch at 100 %. With a budget in
epochs (the earlier default, 8-10 epochs) a from-scratch DenseNet121 got 8 optimiser steps in all at 5 %
on the built-in set and predicted one grade in 3 of 3 folds (test QWK 0.000-0.004); given 150 steps the
same baseline scored 0.515 / 0.621 / 0.576. A comparison of arms at few labels then measures the budget,
not the pretext. So ``trainer.max_steps`` bounds the fine-tune, validation runs every
``trainer.val_check_interval`` steps across epoch boundaries, and ``trainer.max_epochs`` is refused.

``check_budget`` rejects inconsistent settings before any data work; ``budget_record`` says in
``metrics.json`` what a run actually trained: steps, epochs and the step of the checkpoint it tested.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning import Trainer
from omegaconf import DictConfig

from ssl_dr.errors import ConfigError


def check_budget(cfg: DictConfig) -> None:
    """One ``ConfigError`` naming the key and the fix for a budget that is not a fixed number of steps, a last
    stretch of steps that would never be validated, or a warm-up/freeze that outlasts the budget."""
    trainer = cfg.trainer
    max_steps = trainer.get("max_steps")
    if max_steps is None or int(max_steps) < 1:
        raise ConfigError(f"trainer.max_steps={max_steps}: the fine-tune needs a budget of optimiser steps "
                          "(e.g. trainer.max_steps=200), the same for every arm and label fraction")
    if trainer.get("max_epochs") is not None:
        raise ConfigError(f"trainer.max_epochs={trainer.max_epochs}: the fine-tune's budget is trainer.max_steps "
                          "(epochs would give small label fractions fewer optimiser steps); drop trainer.max_epochs "
                          "and set trainer.max_steps (the pretext has pretext.max_epochs)")
    interval = trainer.get("val_check_interval")
    if not isinstance(interval, int) or interval < 1 or trainer.get("check_val_every_n_epoch") is not None:
        raise ConfigError(f"trainer.val_check_interval={interval}: validate every N optimiser steps (an integer, "
                          "with trainer.check_val_every_n_epoch=null), e.g. trainer.val_check_interval=20")
    if max_steps % interval:
        raise ConfigError(f"trainer.max_steps={max_steps} is not a multiple of trainer.val_check_interval={interval}: "
                          f"the last {max_steps % interval} steps would never be validated; make it a multiple")
    classifier = cfg.model.classifier
    warmup = (classifier.get("scheduler") or {}).get("warmup_steps", 0)
    if not 0 <= int(warmup) < max_steps:
        raise ConfigError(f"model.classifier.scheduler.warmup_steps={warmup} must be in "
                          f"[0, trainer.max_steps={max_steps})")
    # freeze_steps == max_steps is a linear probe: the head alone trains on a frozen learned encoder
    freeze = classifier.get("freeze_steps", 0)
    if not 0 <= int(freeze) <= max_steps:
        raise ConfigError(f"model.classifier.freeze_steps={freeze} must be in [0, trainer.max_steps={max_steps}] "
                          f"({max_steps}: a linear probe)")


def freeze_steps(cfg: DictConfig) -> int:
    """Steps with a frozen encoder: ``model.classifier.freeze_steps`` for an encoder that starts from learned
    weights (pretext, ImageNet, a foundation model), 0 for a random one — freezing random features only fits a
    head on noise."""
    return int(cfg.model.classifier.get("freeze_steps", 0)) if cfg.init != "random" else 0


def budget_record(trainer: Trainer) -> dict[str, Any]:
    """``train/steps`` and ``train/epochs`` trained (early stopping may end a run before the budget) and
    ``best/step``, the optimiser step of the checkpoint chosen on validation (``nan`` when there is none)."""
    batches = trainer.num_training_batches
    epochs = trainer.global_step / batches if isinstance(batches, int) and batches > 0 else float("nan")
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    step = float("nan")
    if best and Path(best).is_file():  # memory-mapped: the step is read, the weights are not
        step = int(torch.load(best, map_location="cpu", weights_only=True, mmap=True)["global_step"])
    return {"train/steps": trainer.global_step, "train/epochs": round(epochs, 2), "best/step": step}
