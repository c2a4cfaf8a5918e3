"""JigsawPretext: cut an image into grid x grid cells, shuffle them by one of a fixed set of
permutations, and classify which permutation was applied (Noroozi & Favaro 2016).

Whole-image variant: the shuffled cells are put back into one image that the backbone sees whole, because
DenseNet121's 32x downsampling would shrink single small tiles to nothing. Each cell keeps a blank border
(``gap``) and leftover pixels are blanked, so no cut can be solved by matching pixels. The puzzle is cut from the
centre of the fundus (``crop``): cut from the whole photograph, the disc's rim gives every border cell's place
away. The permutation set (greedy maximal minimum Hamming distance, seeded) is the same in every process and run.
Convention (``jigsaw_batch``): cells are numbered row-major, and cell ``j`` of the output holds cell ``perm[j]``
of the input, ``perm = permutations[label]``. Measurements: docs/arms.md ("Jigsaw"), docs/camera_cues.md.
"""

from __future__ import annotations

import itertools
from functools import cache, partial

import numpy as np
import torch
import torch.nn.functional as F

from ssl_dr.errors import ConfigError
from ssl_dr.models.backbone import Backbone
from ssl_dr.pretexts.base import PretextModule, PretextStep, mlp_head

# up to 9 tiles (grid 3) every permutation is a candidate (9! = 362880); beyond that a seeded sample
MAX_ENUMERATED_TILES = 9
SAMPLED_CANDIDATES = 100_000
# content pixels a cell must keep per side (inside its border) to say anything about where it belongs
MIN_CELL_CONTENT = 4


@cache
def maximal_hamming_permutations(num_tiles: int, count: int, seed: int) -> np.ndarray:
    """``(count, num_tiles)`` permutations of ``range(num_tiles)``, picked greedily: a random first one,
    then always a candidate whose smallest Hamming distance to those already picked is largest (ties
    broken by the same seeded generator). Cached (about a second for 9 tiles), hence read-only."""
    rng = np.random.default_rng(seed)
    if num_tiles <= MAX_ENUMERATED_TILES:
        candidates = np.array(list(itertools.permutations(range(num_tiles))), dtype=np.int8)
    else:
        candidates = np.argsort(rng.random((SAMPLED_CANDIDATES, num_tiles)), axis=1).astype(np.int16)
    if count > len(candidates):
        raise ConfigError(f"pretext.module.num_permutations={count} exceeds the {len(candidates)} candidate "
                          f"permutations of {num_tiles} tiles; lower it or raise pretext.module.grid")
    chosen = [int(rng.integers(len(candidates)))]
    nearest = (candidates != candidates[chosen[0]]).sum(axis=1)  # distance to the closest chosen permutation
    while len(chosen) < count:
        best = np.flatnonzero(nearest == nearest.max())
        pick = int(best[rng.integers(len(best))])
        chosen.append(pick)
        nearest = np.minimum(nearest, (candidates != candidates[pick]).sum(axis=1))
    perms = candidates[chosen].astype(np.int64)
    perms.setflags(write=False)
    return perms


def cell_geometry(size: int, grid: int, gap: float) -> tuple[int, int]:
    """``(cell, border)`` in pixels for a side of ``size`` px: cells of ``size // grid`` px, each with a
    blank border of ``round(gap * cell)`` px on every side and ``MIN_CELL_CONTENT`` px or more inside."""
    cell = size // grid
    border = round(gap * cell)
    if grid < 2 or not 0 <= gap < 0.5 or cell - 2 * border < MIN_CELL_CONTENT:
        raise ConfigError(f"pretext.module.grid={grid} with pretext.module.gap={gap} does not fit a {size} px image "
                          f"({cell} px cells, {border} px border each side); use grid >= 2 and 0 <= gap < 0.5, and "
                          f"lower grid or gap or raise data.image_size so every cell keeps {MIN_CELL_CONTENT} px "
                          "or more of content")
    return cell, border


def central_crop(images: torch.Tensor, share: float) -> torch.Tensor:
    """The centred ``round(share * side)`` square of every image, resized (bilinear) back to full size."""
    if share == 1.0:
        return images
    h, w = images.shape[-2:]
    ch, cw = round(share * h), round(share * w)
    top, left = (h - ch) // 2, (w - cw) // 2
    return F.interpolate(images[..., top:top + ch, left:left + cw], size=(h, w), mode="bilinear",
                         align_corners=False)


def jigsaw_batch(images: torch.Tensor, permutations: torch.Tensor, labels: torch.Tensor, grid: int,
                 gap: float) -> torch.Tensor:
    """``(B, C, H, W)`` -> puzzles of the same shape: cell ``j`` (row-major) of ``out[i]`` holds cell
    ``permutations[labels[i]][j]`` of ``images[i]``; every cell's border (``gap``) and the pixels beyond
    ``grid`` whole cells are 0. Pure: no randomness, the labels are given."""
    b, c, h, w = images.shape
    (ch, bh), (cw, bw) = cell_geometry(h, grid, gap), cell_geometry(w, grid, gap)
    cells = (images[..., :grid * ch, :grid * cw].reshape(b, c, grid, ch, grid, cw)
             .permute(0, 2, 4, 1, 3, 5).reshape(b, grid * grid, c, ch, cw))
    order = permutations[labels].to(images.device)  # (B, grid*grid)
    shuffled = torch.gather(cells, 1, order[:, :, None, None, None].expand_as(cells))
    inner = torch.zeros(ch, cw, dtype=images.dtype, device=images.device)
    inner[bh:ch - bh, bw:cw - bw] = 1
    shuffled = shuffled * inner
    out = torch.zeros_like(images)
    out[..., :grid * ch, :grid * cw] = (shuffled.reshape(b, grid, grid, c, ch, cw)
                                        .permute(0, 3, 1, 4, 2, 5).reshape(b, c, grid * ch, grid * cw))
    return out


class JigsawPretext(PretextModule):
    """Backbone + a small MLP head trained with ``num_permutations``-way cross-entropy on puzzles.

    Training draws one permutation per image from torch's global generator (seeded, and restored on
    resume); validation draws from a generator seeded by the batch index, so every epoch is measured on
    the same puzzles and the training stream is left untouched.
    """

    def __init__(self, backbone: Backbone, optimizer: partial, scheduler: partial | None = None, *,
                 image_size: int, grid: int = 3, num_permutations: int = 24, gap: float = 0.1,
                 crop: float = 0.7, permutation_seed: int = 0, head_hidden: int = 256,
                 lr_scaling: str = "auto") -> None:
        super().__init__(backbone, optimizer, scheduler, lr_scaling)
        cell_geometry(image_size, grid, gap)  # fail on a bad grid/gap now, not mid-training
        if num_permutations < 2:
            raise ConfigError(f"pretext.module.num_permutations={num_permutations} must be at least 2")
        if not 0 < crop <= 1:
            raise ConfigError(f"pretext.module.crop={crop} must be in (0, 1] (1 = the whole image)")
        self.grid = grid
        self.gap = gap
        self.crop = crop
        perms = maximal_hamming_permutations(grid * grid, num_permutations, permutation_seed)
        self.register_buffer("permutations", torch.tensor(perms))
        self.head = mlp_head(backbone.num_features, head_hidden, num_permutations)

    def _labels(self, batch_size: int, batch_idx: int) -> torch.Tensor:
        generator = None if self.training else torch.Generator().manual_seed(batch_idx)
        return torch.randint(len(self.permutations), (batch_size,), generator=generator)

    def step(self, batch: torch.Tensor, batch_idx: int) -> PretextStep:
        labels = self._labels(batch.shape[0], batch_idx).to(batch.device)
        puzzles = jigsaw_batch(central_crop(batch, self.crop), self.permutations, labels, self.grid, self.gap)
        logits = self(puzzles)
        return PretextStep(F.cross_entropy(logits, labels), logits, labels, puzzles)

    def answer_name(self, candidate: int) -> str:
        return f"perm {candidate}"
