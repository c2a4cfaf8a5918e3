"""Pictures a W&B run shows, where a person would rather look than read (``cfg.media``).

Fine-tune: ``test/predictions``, a table of a fixed sample of test images (thumbnail, true and predicted grade,
probabilities or score, a Grad-CAM overlay on the first ``media.grad_cam`` rows where the map is fine enough), the
referable ROC and precision-recall curves and the per-grade recall and precision. Pretext: ``pretext/examples``, a
grid of held-out images as the pretext feeds them, captioned ``right answer -> predicted`` (green right, red wrong).
The sample is fixed, the same images in every run of a fold, taking each grade in turn so rare grades are always in
it: two arms compare picture by picture, and a handful keeps W&B fast. Everything runs once after the phase, on
the process that writes the W&B run (rank 0 under DDP).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
import torch

from ssl_dr.data.datasets import FundusDataset
from ssl_dr.data.records import GRADE_NAMES, NUM_GRADES
from ssl_dr.inference.grad_cam import caption, captioned, coarse_map, find_target_layer, grad_cam, overlay
from ssl_dr.models.metrics import confusion_summary
from ssl_dr.training.curves import ReferableCurves

log = logging.getLogger(__name__)

THUMBNAIL_SIDE = 128
"""Thumbnails and grid tiles smaller than this (a 32-64 px run) are upscaled so their caption stays legible."""
RIGHT, WRONG = (120, 255, 120), (255, 110, 110)
"""Caption colours of a right and a wrong pretext answer."""


@dataclass(frozen=True)
class MediaConfig:
    """``cfg.media``: how many pictures each run shows on W&B (0 turns one off)."""

    predictions: int = 20
    grad_cam: int = 5
    pretext_grid: int = 8

    def __post_init__(self) -> None:
        for name in ("predictions", "grad_cam", "pretext_grid"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"media.{name}={getattr(self, name)!r} must be a whole number >= 0 (0: none)")


def sample_by_grade(grades: Sequence[int], size: int) -> list[int]:
    """Positions of ``size`` images (or all), taken one grade after another in order: the first image of
    grade 0, 1, ..., 4, then the second of each, ..., skipping grades that ran out."""
    queues = [[i for i, g in enumerate(grades) if g == grade] for grade in range(NUM_GRADES)]
    picked: list[int] = []
    depth = 0
    while len(picked) < min(size, len(grades)):
        picked += [queue[depth] for queue in queues if depth < len(queue)][:size - len(picked)]
        depth += 1
    return picked


def thumbnail(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` (RGB uint8) upscaled to at least ``THUMBNAIL_SIDE`` px, nearest neighbour (no new detail)."""
    side = pixels.shape[0]
    if side >= THUMBNAIL_SIDE:
        return np.ascontiguousarray(pixels)
    factor = -(-THUMBNAIL_SIDE // side)
    return cv2.resize(pixels, (side * factor, side * factor), interpolation=cv2.INTER_NEAREST)


def predictions_table(module: Any, dataset: FundusDataset, predictions_csv: Path, size: int, cams: int
                      ) -> tuple[Any, str | None]:
    """``wandb.Table`` of ``size`` test images (``sample_by_grade``) with Grad-CAM on the first ``cams``, and why
    there is no Grad-CAM (None where drawn or not asked for).

    The grades, predictions and probabilities are the run's ``test_predictions.csv`` rows (the tested
    checkpoint's own output); ``module`` must hold that checkpoint's weights (it does after ``trainer.test``)."""
    import wandb

    predictions = pd.read_csv(predictions_csv, dtype={"id_code": str})
    rows = sample_by_grade(predictions["grade"].tolist(), size)
    prob_columns = [c for c in (f"p{k}" for k in range(NUM_GRADES)) if c in predictions]
    score_columns = ["score"] if "score" in predictions else []
    position = {rec.id_code: i for i, rec in enumerate(dataset.records)}
    overlays, note = _grad_cam_overlays(module, dataset, [position[predictions.at[r, "id_code"]] for r in rows[:cams]],
                                        predictions.loc[rows[:cams]], prob_columns, score_columns)
    table = wandb.Table(columns=["id_code", "image", "grade", "pred", "correct", *prob_columns, *score_columns,
                                 "grad_cam"])
    for n, r in enumerate(rows):
        row = predictions.loc[r]
        pixels = dataset.cache.image(row["id_code"]) if dataset.cache is not None else None
        image = wandb.Image(thumbnail(pixels)) if pixels is not None else None
        table.add_data(row["id_code"], image, int(row["grade"]), int(row["pred"]), bool(row["grade"] == row["pred"]),
                       *(round(float(row[c]), 4) for c in prob_columns + score_columns),
                       wandb.Image(overlays[n][0], caption=overlays[n][1]) if n < len(overlays) else None)
    return table, note


def _grad_cam_overlays(module: Any, dataset: FundusDataset, positions: list[int], rows: pd.DataFrame,
                       prob_columns: list[str], score_columns: list[str]
                       ) -> tuple[list[tuple[np.ndarray, str]], str | None]:
    """``(overlay, caption)`` explaining each image's predicted grade (as tested), captioned like
    ``ssl_dr.explain``'s with the true grade in front; none, and why, where the feature map is too coarse."""
    if not positions or dataset.cache is None:
        return [], None
    module.eval()  # as tested: batch-norm statistics, no dropout, images independent of each other
    device = next(module.parameters()).device
    images = torch.stack([dataset[i][0] for i in positions]).to(device)
    layer = dict(module.named_modules())[find_target_layer(module, module.backbone.model, images.shape[-1])]
    predicted = torch.tensor(rows["pred"].to_numpy(), dtype=torch.long)
    maps, _, _ = grad_cam(module, layer, images, predicted)
    if note := coarse_map(maps, images.shape[-1]):
        return [], f"Grad-CAM not drawn: {note}"
    out = []
    for i, (position, (_, row)) in enumerate(zip(positions, rows.iterrows(), strict=True)):
        pixels = dataset.cache.image(dataset.records[position].id_code)
        probs = [float(row[c]) for c in prob_columns] if prob_columns else None
        score = float(row[score_columns[0]]) if score_columns else None
        text = caption(int(row["pred"]), int(row["pred"]), probs, score, true=int(row["grade"]))
        out.append((overlay(np.asarray(pixels), maps[i].cpu().numpy(), text,
                            max(pixels.shape[0], THUMBNAIL_SIDE * 2)), text))
    return out, None


def curve_charts(curves: ReferableCurves, stage: str) -> dict[str, Any]:
    """W&B's area-under-curve charts of the referable ROC and precision-recall points, exactly as computed
    (``wandb.plot.roc_curve`` would round them to 3 decimals, ``pr_curve`` interpolate them)."""
    title = f"{stage}: {curves.referable} of {curves.images} images referable (grade >= 2)"
    return {f"{stage}/roc_referable": _area_chart(("fpr", "tpr"), curves.fpr, curves.tpr, f"AUROC {curves.auroc:.3f}",
                                                  title),
            f"{stage}/pr_referable": _area_chart(("recall", "precision"), curves.recall, curves.precision,
                                                 f"average precision {curves.average_precision:.3f}", title)}


def _area_chart(axes: tuple[str, str], xs: np.ndarray, ys: np.ndarray, label: str, title: str) -> Any:
    """One curve as a ``wandb.Table`` (``curve``, x, y) drawn by the preset that ``wandb.plot.roc_curve`` uses."""
    import wandb

    x, y = axes
    points = [[label, float(a), float(b)] for a, b in zip(xs, ys, strict=True)]
    table = wandb.Table(columns=["curve", x, y], data=points)
    return wandb.plot_table("wandb/area-under-curve/v0", table, {"x": x, "y": y, "class": "curve"},
                            {"title": title, "x-axis-title": x, "y-axis-title": y})


def per_grade_table(confusion: Sequence[Sequence[int]]) -> Any:
    """``wandb.Table`` of grade, name, support (true images), recall and precision (None without a denominator),
    read off the confusion matrix (rows true grade) as metrics.json's ``recall_grade<k>``/``precision_grade<k>``."""
    import wandb

    figures = confusion_summary(np.asarray(confusion))
    support = np.asarray(confusion).sum(axis=1)
    table = wandb.Table(columns=["grade", "name", "support", "recall", "precision"])
    for grade, name in enumerate(GRADE_NAMES):
        table.add_data(grade, name, int(support[grade]),
                       *(None if v != v else v for v in (figures[f"recall_grade{grade}"],
                                                         figures[f"precision_grade{grade}"])))
    return table


def pretext_grid(module: Any, dataset: FundusDataset, size: int, mean: Sequence[float], std: Sequence[float]
                 ) -> tuple[np.ndarray, str]:
    """One RGB picture of the first ``size`` held-out images as the pretext feeds them to the network
    (``module.examples``: a column per image, a row per view: the 4 rotations, the puzzle, the 2 SimCLR views,
    MAE's masked input and its reconstruction), each tile captioned; and a caption for the whole grid."""
    size = min(size, len(dataset))
    batch = torch.stack([dataset[i] for i in range(size)]).to(next(module.parameters()).device)
    module.eval()
    with torch.no_grad():
        shown = module.examples(batch)
    pixels = shown.tiles.float().cpu() * torch.tensor(std).view(1, -1, 1, 1) + torch.tensor(mean).view(1, -1, 1, 1)
    tiles = (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    captioned_tiles = [captioned(thumbnail(tile).copy(), text, RIGHT if right else WRONG)
                       for tile, text, right in zip(tiles, shown.captions, shown.right, strict=True)]
    return _grid(captioned_tiles, columns=size), f"{size} held-out images as the pretext sees them; {shown.summary}"


def _grid(tiles: list[np.ndarray], columns: int, gap: int = 2) -> np.ndarray:
    """Tiles (equal squares) in rows of ``columns``, white gaps between them."""
    side = tiles[0].shape[0]
    rows = -(-len(tiles) // columns)
    grid = np.full((rows * (side + gap) - gap, columns * (side + gap) - gap, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * (side + gap):r * (side + gap) + side, c * (side + gap):c * (side + gap) + side] = tile
    return grid
