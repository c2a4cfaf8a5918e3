"""Completing the config's partial optimiser/scheduler (``_partial_: true``) for a module."""

from __future__ import annotations

from functools import partial
from typing import Any

from lightning import LightningModule


def configure_optimizers(module: LightningModule, optimizer: partial, scheduler: partial | None) -> Any:
    """All parameters go to the optimiser; frozen ones simply get no gradient (so unfreezing later
    needs no new optimiser). The scheduler steps once per epoch.

    ``module.lr_scale`` (set by ``ssl_dr.scale.ScaleCallback`` from ``scale.lr_scaling`` and the number of
    DDP ranks) multiplies the configured learning rates before the scheduler records them as its base.
    """
    opt = optimizer(params=module.parameters())
    factor = float(getattr(module, "lr_scale", 1.0))
    for group in opt.param_groups:
        group["lr"] *= factor
    if scheduler is None:
        return opt
    return {"optimizer": opt, "lr_scheduler": {"scheduler": scheduler(optimizer=opt), "interval": "epoch"}}
