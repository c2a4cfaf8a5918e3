"""Model-side speed switches (``scale.*``): channels_last, ``torch.compile``, gradient checkpointing, and the
learning-rate rule for the global batch under DDP.

They act on the *model*, not the Trainer, so ``trainer=gpu`` cannot switch them on; a callback keeps the
modules plain (same checkpoint and backbone-file keys) and the switches in config.
"""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.callbacks import Callback
from torch import nn


class ScaleCallback(Callback):
    """Convert the module to channels_last, enable timm gradient checkpointing, compile the backbone.

    Applied in ``setup`` (stage ``fit``), i.e. before Lightning moves the module to the device and wraps it
    in DDP, so DDP registers the final parameters. ``compile`` uses ``nn.Module.compile`` (in place), so the
    state-dict keys do not gain an ``_orig_mod.`` prefix and saved backbones/checkpoints stay portable.
    """

    def __init__(self, channels_last: bool | str = "auto", compile: bool = False,
                 grad_checkpointing: bool = False, lr_scaling: str = "auto") -> None:
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"scale.channels_last={channels_last!r} must be true, false or auto")
        if lr_scaling not in LR_SCALING_RULES:
            raise ValueError(f"scale.lr_scaling={lr_scaling!r} must be one of {', '.join(LR_SCALING_RULES)}")
        self.channels_last = channels_last
        self.compile = compile
        self.grad_checkpointing = grad_checkpointing
        self.lr_scaling = lr_scaling

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # the test after a fit reuses the same (already converted) module
            return
        model = backbone_model(pl_module)
        # read by ssl_dr.models.optim.configure_optimizers, which the strategy calls after this hook
        pl_module.lr_scale = lr_scale(self.lr_scaling, trainer.world_size, _optimizer_name(pl_module))
        if trainer.world_size > 1 and trainer.is_global_zero:
            print(f"[ssl_dr] {trainer.world_size} ranks: global batch = {trainer.world_size} x per-rank batch; "
                  f"learning rate x{pl_module.lr_scale:.3g} (scale.lr_scaling={self.lr_scaling})")
        if self.grad_checkpointing:
            model.set_grad_checkpointing(True)
        if self.wants_channels_last(trainer):
            pl_module.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()

    def wants_channels_last(self, trainer: L.Trainer) -> bool:
        """``auto``: on for CUDA (NHWC feeds the bf16 tensor-core kernels), off on CPU where it rarely helps."""
        if self.channels_last == "auto":
            return isinstance(trainer.accelerator, CUDAAccelerator)
        return bool(self.channels_last)


# How the learning rate follows the global batch (world_size x per-rank batch) under DDP. As in timm's
# training script: linear for SGD-like optimisers (Goyal et al. 2017), square root for adaptive ones
# (Adam/AdamW/Ada*/Lamb), whose effective step already adapts to gradient noise. One rank: factor 1.
LR_SCALING_RULES = ("auto", "linear", "sqrt", "none")
ADAPTIVE_OPTIMIZER_TAGS = ("adam", "ada", "lamb", "lion")


def lr_scale(rule: str, world_size: int, optimizer_name: str = "") -> float:
    """Factor for the configured learning rate when ``world_size`` ranks each take a config-sized batch."""
    if rule == "auto":
        rule = "sqrt" if any(tag in optimizer_name.lower() for tag in ADAPTIVE_OPTIMIZER_TAGS) else "linear"
    if rule == "linear":
        return float(world_size)
    if rule == "sqrt":
        return float(world_size) ** 0.5
    if rule == "none":
        return 1.0
    raise ValueError(f"scale.lr_scaling={rule!r} must be one of {', '.join(LR_SCALING_RULES)}")


def _optimizer_name(pl_module: nn.Module) -> str:
    factory = getattr(pl_module, "optimizer_factory", None)
    return getattr(getattr(factory, "func", factory), "__name__", "")


def backbone_model(pl_module: nn.Module) -> nn.Module:
    """The timm model inside a pretext/classifier module (``module.backbone.model``)."""
    model = getattr(getattr(pl_module, "backbone", None), "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(pl_module).__name__} has no .backbone.model (a timm model); "
                        "ScaleCallback only works with ssl_dr modules built on ssl_dr.models.backbone.Backbone")
    return model


