"""Completing the config's partial optimiser/scheduler (``_partial_: true``) for a module, the learning-rate
rule for the global batch under DDP, and the fine-tune's learning-rate schedule (linear warm-up, then cosine
decay, per optimiser step)."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

from lightning import LightningModule
from torch import nn
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


# The input stem of a timm ViT: layer 0 of the layer-decay rule (tokens, position embedding, patch embedding)
VIT_STEM = ("cls_token", "reg_token", "dist_token", "pos_embed", "patch_embed.", "norm_pre.")


def vit_layer_id(name: str, depth: int) -> int:
    """Layer of a timm ViT parameter in the published layer-decay rule (BEiT, MAE, RETFound ``util/lr_decay.py``):
    the stem is layer 0, ``blocks.i`` layer i + 1, everything after the last block (final ``norm``, ``fc_norm``)
    layer ``depth + 1``, the head's. Written out rather than timm's ``param_groups_layer_decay``, whose ViT
    ``group_matcher`` gives the final norm a layer of its own: with class-token pooling every depth then trained
    one step of decay too fast (``blocks.11`` of 12 at the full rate)."""
    if name.startswith(VIT_STEM):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return depth + 1


def encoder_layers(encoder: nn.Module) -> tuple[dict[str, int], int]:
    """Each parameter's layer (0: input stem) and the top layer, which trains at the full rate with the head.
    A ViT follows the published rule (``vit_layer_id``); another timm network (a DenseNet) timm's own grouping
    (its ``group_matcher``; what it leaves unmatched, such as a final norm, goes to the top with the head)."""
    from timm.models import group_parameters
    from timm.models.vision_transformer import VisionTransformer

    names = [name for name, _ in encoder.named_parameters()]
    if isinstance(encoder, VisionTransformer):
        depth = len(encoder.blocks)
        return {name: vit_layer_id(name, depth) for name in names}, depth + 1
    if not hasattr(encoder, "group_matcher"):
        raise ValueError(f"model.classifier.layer_decay: {type(encoder).__name__} has no timm group_matcher to "
                         "order its layers by depth; set model.classifier.layer_decay=null")
    matched = group_parameters(encoder, encoder.group_matcher(coarse=False), reverse=True)
    top = max(matched.values(), default=0) + 1
    return {name: matched.get(name, top) for name in names}, top


def layer_decay_groups(module: LightningModule, optimizer: partial, layer_decay: float) -> list[dict[str, Any]]:
    """Parameter groups whose learning rate shrinks with depth: the encoder's (``module.backbone.model``) layer l
    trains at ``lr x layer_decay ** (top - l)`` (``encoder_layers``), the grade head at ``lr``.

    No weight decay on biases, norms, layer scales (every tensor of 1 dimension), the encoder's
    ``no_weight_decay()`` tensors (class/register tokens, position embedding), nor on the head's bias: RETFound's
    recipe, whose head sits in the top layer under the same rule. The rates are written into each group's ``lr``
    (timm only tags groups with an ``lr_scale`` its own schedulers apply) before the torch scheduler records them
    as the groups' base rates."""
    if not 0 < layer_decay <= 1:
        raise ValueError(f"model.classifier.layer_decay={layer_decay} must be in (0, 1] (RETFound: 0.65)")
    encoder = module.backbone.model
    encoder.requires_grad_(True)  # every tensor gets a group; a frozen start is applied per batch instead
    base_lr, weight_decay = optimizer.keywords["lr"], optimizer.keywords.get("weight_decay", 0.0)
    layers, top = encoder_layers(encoder)
    no_decay = set(encoder.no_weight_decay()) if hasattr(encoder, "no_weight_decay") else set()
    groups: dict[str, dict[str, Any]] = {}

    def add(param: nn.Parameter, group: str, scale: float, decays: bool) -> None:
        key = group + ("" if decays else "-no_decay")  # named for the learning-rate monitor (lr-AdamW/layer03)
        groups.setdefault(key, {"params": [], "lr": base_lr * scale, "name": key,
                                "weight_decay": weight_decay if decays else 0.0})["params"].append(param)

    for name, param in sorted(encoder.named_parameters(), key=lambda item: layers[item[0]]):
        add(param, f"layer{layers[name]:02d}", layer_decay ** (top - layers[name]),
            decays=param.ndim > 1 and name not in no_decay)
    in_encoder = {id(p) for p in encoder.parameters()}
    for param in module.parameters():
        if id(param) not in in_encoder:
            add(param, "head", 1.0, decays=param.ndim > 1)
    return list(groups.values())


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
