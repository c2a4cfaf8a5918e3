"""Completing the config's partial optimiser/scheduler (``_partial_: true``) for a module, the learning-rate
rule for the global batch under DDP, and the fine-tune's learning-rate schedule (linear warm-up, then cosine
decay, per optimiser step)."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

from lightning import LightningModule
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

log = logging.getLogger(__name__)

SCHEDULER_INTERVALS = ("epoch", "step")

# How the learning rate follows the global batch (world_size x per-rank batch) under DDP. As in timm's
# training script: linear for SGD-like optimisers (Goyal et al. 2017), square root for adaptive ones
# (Adam/AdamW/Ada*/Lamb), whose effective step already adapts to gradient noise. One rank: factor 1.
LR_SCALING_RULES = ("auto", "linear", "sqrt", "none")
ADAPTIVE_OPTIMIZER_TAGS = ("adam", "ada", "lamb", "lion")


def check_lr_scaling(rule: str, key: str) -> None:
    """Fail when the module is built, not when the first DDP fit starts."""
    if rule not in LR_SCALING_RULES:
        raise ValueError(f"{key}={rule!r} must be one of {', '.join(LR_SCALING_RULES)}")


def lr_scale(rule: str, world_size: int, optimizer_name: str = "") -> float:
    """Factor for the configured learning rate when ``world_size`` ranks each take a config-sized batch."""
    check_lr_scaling(rule, "lr_scaling")
    if rule == "auto":
        rule = "sqrt" if any(tag in optimizer_name.lower() for tag in ADAPTIVE_OPTIMIZER_TAGS) else "linear"
    return {"linear": float(world_size), "sqrt": float(world_size) ** 0.5, "none": 1.0}[rule]


class WarmupCosineFactor:
    """Multiplier of the base learning rate at optimiser step ``step``: ``(step + 1) / warmup_steps`` while
    warming up, then a cosine from 1 down to ``final_factor`` at ``total_steps``.

    Why a warm-up: the grade head starts random, and its first large gradients flow into the encoder at
    the full learning rate; a random-init baseline has no frozen-encoder phase to absorb that (freezing a
    random encoder would only fit a head on noise), so every arm gets the same gentle start instead.
    A class, not a lambda, so ``LambdaLR.state_dict`` keeps it and a resumed run continues the schedule.
    """

    def __init__(self, warmup_steps: int, total_steps: int, final_factor: float = 0.0) -> None:
        if total_steps < 1:
            raise ValueError(f"the schedule needs total_steps >= 1 (trainer.max_steps), got {total_steps}")
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"warmup_steps={warmup_steps} must be in [0, total_steps={total_steps})")
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps
        self.final_factor = final_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.final_factor + (1 - self.final_factor) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, warmup_steps: int, total_steps: int, final_factor: float = 0.0) -> LambdaLR:
    """``LambdaLR`` following ``WarmupCosineFactor``; step it once per optimiser step."""
    return LambdaLR(optimizer, WarmupCosineFactor(warmup_steps, total_steps, final_factor))


def layer_decay_groups(module: LightningModule, optimizer: partial, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups whose learning rate shrinks with depth: ``lr x layer_decay ** (layers above)`` for the
    encoder (``module.backbone.model``), the full rate for everything else (the grade head).

    The grouping is timm's ``param_groups_layer_decay`` (its layer ids for ViTs, DenseNets, ...; biases, norms and
    ``no_weight_decay`` tensors without weight decay, as in RETFound's recipe). timm only *tags* each group with
    ``lr_scale``, which timm's own schedulers apply; with a torch scheduler the scale must be in the group's
    ``lr`` itself, before the scheduler records it as the group's base rate, so it is applied here."""
    from timm.optim import param_groups_layer_decay

    if not 0 < layer_decay <= 1:
        raise ValueError(f"model.classifier.layer_decay={layer_decay} must be in (0, 1] (RETFound: 0.65)")
    encoder = module.backbone.model
    encoder.requires_grad_(True)  # timm leaves out frozen tensors; a frozen start is applied per batch instead
    base_lr, weight_decay = optimizer.keywords["lr"], optimizer.keywords.get("weight_decay", 0.0)
    no_decay = encoder.no_weight_decay() if hasattr(encoder, "no_weight_decay") else ()
    groups = param_groups_layer_decay(encoder, weight_decay=weight_decay, layer_decay=layer_decay,
                                      no_weight_decay_list=no_decay)
    depths = [round(math.log(group["lr_scale"]) / math.log(layer_decay)) if layer_decay < 1 else 0
              for group in groups]
    for group, depth in zip(groups, depths, strict=True):
        group["lr"] = base_lr * group.pop("lr_scale")
        # named for the learning-rate monitor (lr-AdamW/layer03 instead of pg7): layer 0 is the input stem
        group["name"] = f"layer{max(depths) - depth:02d}" + ("" if group["weight_decay"] else "-no_decay")
    in_encoder = {id(p) for group in groups for p in group["params"]}
    rest = [p for p in module.parameters() if id(p) not in in_encoder]
    return [*groups, {"params": rest, "lr": base_lr, "weight_decay": weight_decay, "name": "head"}]


def configure_optimizers(module: LightningModule, optimizer: partial, scheduler: partial | None,
                         interval: str = "epoch", lr_scaling: str = "auto", layer_decay: float | None = None) -> Any:
    """All parameters go to the optimiser; frozen ones simply get no gradient (so unfreezing later
    needs no new optimiser). The scheduler steps once per ``interval``: ``epoch`` (the pretexts, whose
    length is in epochs) or ``step`` (the fine-tune, whose budget is in optimiser steps).

    The configured learning rates are for one process; under DDP they are multiplied by
    ``lr_scale(lr_scaling, world size, optimiser)`` here, where the optimiser is built (Lightning calls this
    once the trainer, and so its world size, is known), before the scheduler records them as its base.
    ``layer_decay`` (the ViT recipe): per-depth learning rates (``layer_decay_groups``).
    """
    if interval not in SCHEDULER_INTERVALS:
        raise ValueError(f"scheduler interval {interval!r} is not one of {SCHEDULER_INTERVALS}")
    params = module.parameters() if layer_decay is None else layer_decay_groups(module, optimizer, layer_decay)
    opt = optimizer(params=params)
    world_size = module.trainer.world_size if module._trainer is not None else 1
    factor = lr_scale(lr_scaling, world_size, type(opt).__name__)
    for group in opt.param_groups:
        group["lr"] *= factor
    if world_size > 1 and module.trainer.is_global_zero:
        log.info(f"{world_size} ranks: global batch = {world_size} x per-rank batch; {type(opt).__name__} "
                 f"learning rate x{factor:.3g} (lr_scaling={lr_scaling})")
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(optimizer=opt), "interval": interval}}
