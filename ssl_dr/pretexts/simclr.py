"""SimCLRPretext: pull two augmented views of one image together, push all other images apart
(Chen et al. 2020, NT-Xent loss).

The views come from the data pipeline (``pretext.transform: contrastive``, see
``ssl_dr.data.transforms.ContrastiveViews``): a batch is ``(B, 2, C, H, W)``. Here they become one
``(2B, C, H, W)`` batch — first views in rows ``0..B-1``, second views in rows ``B..2B-1``, so the
positive of row ``i`` is row ``(i + B) mod 2B`` — go through backbone + projection MLP, and every row
classifies its positive among the other ``2B - 1`` rows (cosine similarity / temperature). The
reported accuracy is that retrieval's top-1 hit rate.

Negatives come from the batch on this device; under DDP each rank contrasts within its own batch, so the
per-device ``pretext.batch_size`` sets the number of negatives.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts.base import PretextModule, PretextStep, mlp_head


def pair_views(views: torch.Tensor) -> torch.Tensor:
    """``(B, 2, C, H, W)`` -> ``(2B, C, H, W)``: all first views, then all second views."""
    if views.ndim != 5 or views.shape[1] != 2:
        raise ValueError(f"SimCLR needs batches of view pairs (B, 2, C, H, W), got {tuple(views.shape)}; "
                         "set pretext.transform=contrastive")
    return torch.cat([views[:, 0], views[:, 1]])


def positive_indices(batch_size: int, device: torch.device | None = None) -> torch.Tensor:
    """Row of each sample's positive in a ``pair_views`` batch: ``i -> i + B`` and ``i + B -> i``."""
    return torch.arange(2 * batch_size, device=device).add(batch_size).remainder(2 * batch_size)


def nt_xent_logits(embeddings: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities / temperature of every pair of the ``2B`` embeddings, a row's own entry
    excluded (-inf), and the positive's column per row: cross-entropy on these is NT-Xent."""
    z = F.normalize(embeddings, dim=1)
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    return logits.masked_fill(self_mask, float("-inf")), positive_indices(len(z) // 2, z.device)


class SimCLRPretext(PretextModule):
    """Backbone + projection MLP trained with NT-Xent; only the backbone is kept (the projection
    absorbs the invariances that would hurt grading, as in SimCLR)."""

    TRANSFORM = "contrastive"

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None, *,
                 temperature: float = 0.5, head_hidden: int = 512, projection_dim: int = 128,
                 lr_scaling: str = "auto") -> None:
        super().__init__(backbone, optimizer, scheduler, lr_scaling)
        if temperature <= 0:
            raise ConfigError(f"pretext.module.temperature={temperature} must be positive (0.1 to 0.5 is usual)")
        self.temperature = temperature
        self.head = mlp_head(backbone.num_features, head_hidden, projection_dim)

    def step(self, batch: torch.Tensor, batch_idx: int) -> PretextStep:
        views = pair_views(batch)
        logits, targets = nt_xent_logits(self(views), self.temperature)
        return PretextStep(F.cross_entropy(logits, targets), logits, targets, views)

    def answer_name(self, candidate: int) -> str:
        return f"view {candidate}"  # the row of the batch's views taken for this view's positive
