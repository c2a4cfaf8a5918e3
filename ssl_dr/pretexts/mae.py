"""MAEPretext: masked autoencoding (He et al., CVPR 2022), the pretext RETFound was trained with, in small.

Most patches are hidden (``mask_ratio``, 75 %); the ViT encoder (kept for the grader) sees only the visible ones,
and a light decoder (discarded afterwards) rebuilds the hidden patches' pixels from them plus a shared mask token.
The loss is the MSE on hidden patches against per-patch normalised pixels (``norm_pix_loss``). So a user with no
downloaded weights can compare a masked-image-modelling start with rotation on their own images. ``pretext/*_acc``
is the share of hidden patches whose reconstruction is nearer their own pixels than any other hidden patch of the
image (chance 1 / hidden patches). Training masks come from torch's seeded generator (restored on resume);
validation masks from a generator seeded by the batch index, the same every epoch. More: docs/arms.md ("MAE").
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block
from torch import nn

from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone, is_vit
from ssl_dr.pretexts.base import PretextExamples, PretextModule, PretextStep


class MAEDecoder(nn.Module):
    """Visible tokens (encoder width) -> pixels of every patch (``patch * patch * 3``)."""

    def __init__(self, width: int, num_patches: int, patch: int, dim: int, depth: int, heads: int) -> None:
        super().__init__()
        self.encoder_norm = nn.LayerNorm(width)  # the encoder's output, normalised for the decoder (a ViT pooled
        # by averaging has no final norm of its own: timm moves it to the fine-tune's fc_norm)
        self.embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch * patch * 3)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def forward(self, visible: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """``visible`` (B, K, width) tokens at patch positions ``keep`` (B, K) -> (B, N, pixels) predictions."""
        tokens = self.embed(self.encoder_norm(visible))
        full = self.mask_token.expand(len(tokens), self.pos_embed.shape[1], -1).clone()
        full = full.scatter(1, keep[..., None].expand(-1, -1, tokens.shape[-1]), tokens)
        return self.pred(self.norm(self.blocks(full + self.pos_embed)))


class MAEPretext(PretextModule):
    """A timm ViT backbone trained to rebuild hidden patches (``MAEDecoder`` is ``self.head``, not kept)."""

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None, *,
                 mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2, decoder_heads: int = 4,
                 norm_pix_loss: bool = True, lr_scaling: str = "auto") -> None:
        super().__init__(backbone, optimizer, scheduler, lr_scaling)
        vit = backbone.model
        if not is_vit(vit):
            raise ConfigError(f"pretext=mae needs a ViT backbone (model.backbone.name=vit_*; arm=mae sets one), not "
                              f"{backbone.name}")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"pretext.module.mask_ratio={mask_ratio} must be in (0, 1) (MAE: 0.75)")
        self.patch = vit.patch_embed.patch_size[0]
        self.num_patches = vit.patch_embed.num_patches
        self.keep = max(1, round(self.num_patches * (1 - mask_ratio)))
        if self.keep >= self.num_patches:
            raise ConfigError(f"pretext.module.mask_ratio={mask_ratio} hides no patch of {self.num_patches}")
        self.norm_pix_loss = norm_pix_loss
        self.head = MAEDecoder(vit.embed_dim, self.num_patches, self.patch, decoder_dim, decoder_depth, decoder_heads)

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, N, patch * patch * 3), patches in the encoder's row-major order."""
        b, c, h, w = images.shape
        p = self.patch
        return (images.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
                .reshape(b, (h // p) * (w // p), p * p * c))

    def unpatchify(self, patches: torch.Tensor, side: int) -> torch.Tensor:
        b, p = len(patches), self.patch
        grid = side // p
        return patches.reshape(b, grid, grid, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(b, 3, side, side)

    def _masks(self, batch_size: int, batch_idx: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keep, hidden)``: per image, the visible and hidden patch positions, each sorted."""
        generator = None if self.training else torch.Generator().manual_seed(batch_idx)
        order = torch.rand(batch_size, self.num_patches, generator=generator).argsort(dim=1).to(device)
        return order[:, :self.keep].sort(dim=1).values, order[:, self.keep:].sort(dim=1).values

    def _reconstruct(self, images: torch.Tensor, batch_idx: int
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(predictions, targets, keep, hidden)``: per-patch pixels predicted and wanted, and the masks."""
        vit = self.backbone.model
        keep, hidden = self._masks(len(images), batch_idx, images.device)
        tokens = vit._pos_embed(vit.patch_embed(images))  # position embeddings added; class/register tokens first
        prefix = vit.num_prefix_tokens
        visible = tokens[:, prefix:].gather(1, keep[..., None].expand(-1, -1, tokens.shape[-1]))
        encoded = vit.norm(vit.blocks(vit.norm_pre(torch.cat([tokens[:, :prefix], visible], dim=1))))
        predictions = self.head(encoded[:, prefix:], keep)
        targets = self.patchify(images)
        if self.norm_pix_loss:
            targets = (targets - targets.mean(dim=-1, keepdim=True)) / (targets.var(dim=-1, keepdim=True) + 1e-6).sqrt()
        return predictions, targets, keep, hidden

    def step(self, batch: torch.Tensor, batch_idx: int) -> PretextStep:
        predictions, targets, _, hidden = self._reconstruct(batch, batch_idx)
        return self._scored(predictions, targets, hidden)

    @staticmethod
    def _scored(predictions: torch.Tensor, targets: torch.Tensor, hidden: torch.Tensor) -> PretextStep:
        """Loss and retrieval scores of one reconstruction, on its hidden patches only."""
        index = hidden[..., None].expand(-1, -1, targets.shape[-1])
        wanted, got = targets.gather(1, index), predictions.gather(1, index)  # (B, M, pixels): hidden patches only
        loss = F.mse_loss(got, wanted)
        scores = -torch.cdist(got, wanted)  # (B, M, M): each reconstruction against every hidden patch
        per_image = torch.arange(wanted.shape[1], device=targets.device)
        return PretextStep(loss, scores.flatten(0, 1), per_image.repeat(len(targets)))

    def examples(self, batch: torch.Tensor) -> PretextExamples:
        """Two rows: each image with its hidden patches blacked out, then the image rebuilt (visible patches as
        given, hidden ones as decoded, un-normalised with each patch's own statistics, as MAE shows them)."""
        predictions, targets, keep, hidden = self._reconstruct(batch, 0)
        step = self._scored(predictions, targets, hidden)  # the same masks and predictions as the pictures
        pixels = self.patchify(batch)
        if self.norm_pix_loss:
            predictions = (predictions * (pixels.var(dim=-1, keepdim=True) + 1e-6).sqrt()
                           + pixels.mean(dim=-1, keepdim=True))
        shown = torch.zeros_like(pixels).scatter(1, keep[..., None].expand(-1, -1, pixels.shape[-1]),
                                                 pixels.gather(1, keep[..., None].expand(-1, -1, pixels.shape[-1])))
        index = hidden[..., None].expand(-1, -1, pixels.shape[-1])
        rebuilt = shown.scatter(1, index, predictions.gather(1, index))
        side = batch.shape[-1]
        hits = (step.scores.argmax(dim=1) == step.targets).view(len(batch), -1).float().mean(dim=1)
        masked_share = hidden.shape[1] / self.num_patches
        return PretextExamples(torch.cat([self.unpatchify(shown, side), self.unpatchify(rebuilt, side)]),
                               [f"{masked_share:.0%} hidden"] * len(batch)
                               + [f"rebuilt: {h:.0%} found" for h in hits.tolist()],
                               [True] * len(batch) + [h > 1 / hidden.shape[1] for h in hits.tolist()],
                               "masked input (top) and reconstruction (bottom); found: hidden patches whose "
                               "reconstruction is nearest their own pixels")
