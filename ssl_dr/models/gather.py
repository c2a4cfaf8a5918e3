"""Collecting a Python value from every DDP rank: the grader's threshold tuning needs every rank's validation
predictions, and the test-prediction writer every rank's rows. Here, under the models, so the grader does not
reach up into ``training`` for it."""

from __future__ import annotations

from typing import Any, TypeVar

import torch

T = TypeVar("T")


def gather_from_ranks(local: T) -> list[T]:
    """Every DDP rank's ``local``, in rank order, on every rank (``[local]`` outside DDP).

    ``all_gather_object`` rather than ``LightningModule.all_gather``: validation and test shards may differ
    in length by one image (``ssl_dr.data.datamodule._evaluation_sampler``), and tensor gathers need equal
    shapes.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return [local]
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return parts
