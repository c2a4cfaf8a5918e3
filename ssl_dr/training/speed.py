"""Model-side speed switches (``scale.*``): channels_last, ``torch.compile`` and gradient checkpointing. (How
the learning rate follows the DDP world size is the optimiser's business: ``ssl_dr.models.optim``.)

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
                 grad_checkpointing: bool = False) -> None:
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"scale.channels_last={channels_last!r} must be true, false or auto")
        self.channels_last = channels_last
        self.compile = compile
        self.grad_checkpointing = grad_checkpointing

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":  # the test after a fit reuses the same (already converted) module
            return
        model = backbone_model(pl_module)
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


def backbone_model(pl_module: nn.Module) -> nn.Module:
    """The timm model inside a pretext/classifier module (``module.backbone.model``)."""
    model = getattr(getattr(pl_module, "backbone", None), "model", None)
    if not isinstance(model, nn.Module):
        raise TypeError(f"{type(pl_module).__name__} has no .backbone.model (a timm model); "
                        "ScaleCallback only works with ssl_dr modules built on ssl_dr.models.backbone.Backbone")
    return model


