"""Grad-CAM heatmaps: which part of the fundus pushed the grader towards a grade.

``python -m ssl_dr.explain ckpt=.../best.ckpt images=<folder or CSV> out=<folder> [grade=pred|0..4] [limit=N]``

Why: a kappa says how often the grader is right, not why; a heatmap on the optic disc or the black border instead
of on the lesions is a shortcut that a held-out score on the same kind of data cannot reveal. The method and the
layer it reads live in ``ssl_dr.inference.grad_cam`` (shared with the W&B predictions table). Each overlay is the
preprocessed fundus with the heatmap blended over its field of view and the prediction written on top, upscaled to
at least ``MIN_SIDE`` px; ``index.csv`` lists them. Layers, examples and files: docs/inference.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ssl_dr.data.records import Record
from ssl_dr.inference import (
    InferenceError,
    InputArgs,
    arg,
    decoded_images,
    eval_transform,
    list_images,
    load_classifier,
    read_spec,
    resolve_device,
    run_cli,
    tensor_batches,
)
from ssl_dr.inference.grad_cam import MIN_SIDE, caption, coarse_map, find_target_layer, grad_cam, overlay
from ssl_dr.models.heads import GradeHead

INDEX_NAME = "index.csv"
SKIPPED_NAME = "skipped.csv"


@dataclass(kw_only=True)
class ExplainArgs(InputArgs):
    """``python -m ssl_dr.explain`` arguments."""

    out: Path = arg(help="folder for <id_code>.png overlays and index.csv")
    grade: str = arg("pred", help="grade whose evidence is shown (pred: the predicted one)",
                     choices=("pred", "0", "1", "2", "3", "4"))
    limit: int | None = arg(None, help="explain only the first N images")
    layer: str = arg("auto", help="module whose output is explained (auto: the last 4-D feature map)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.limit is not None and self.limit < 1:
            raise InferenceError(f"limit={self.limit} must be at least 1")


def explain(args: ExplainArgs) -> pd.DataFrame:
    """Write one overlay PNG per readable image and ``index.csv`` into ``args.out``; return the index."""
    spec = read_spec(args.ckpt)
    records = list_images(args.images, args.image_dir)[:args.limit]
    device = resolve_device(args.device)
    model = load_classifier(args.ckpt, spec)
    layer_name = find_target_layer(model, model.backbone.model, spec.image_size, args.layer)
    layer = dict(model.named_modules())[layer_name]
    side = max(spec.image_size, MIN_SIDE)
    fixed = None if args.grade == "pred" else int(args.grade)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    with decoded_images(records, spec, args.num_workers, args.out / SKIPPED_NAME if args.skip_bad else None) as dec:
        model.to(device)
        with tqdm(total=len(dec.records), desc=f"Grad-CAM ({layer_name})", unit="img") as bar:
            for span, images in tensor_batches(dec, eval_transform(spec), args.batch_size):
                targets = None if fixed is None else torch.full((len(images),), fixed, dtype=torch.long)
                cams, activated, chosen = grad_cam(model, layer, images.to(device), targets)
                if not rows and (note := coarse_map(cams, spec.image_size)):
                    print(f"[ssl_dr] warning: Grad-CAM of {layer_name}: {note} (a model trained at that size, or "
                          "an earlier layer=): these maps cannot localise a lesion")
                rows += _write_overlays(args.out, dec.records[span], dec.pixels[span], cams, model.grading,
                                        activated, chosen, side)
                bar.update(len(images))
    index = pd.DataFrame(rows)
    index.to_csv(args.out / INDEX_NAME, index=False, float_format="%.4f")
    print(f"[ssl_dr] {len(index)} Grad-CAM overlay(s) of layer {layer_name} in {args.out} (index: {INDEX_NAME})")
    if args.skip_bad:
        print(f"[ssl_dr] skipped {len(dec.skipped)} unreadable image(s), listed in {args.out / SKIPPED_NAME}")
    return index


def _write_overlays(out: Path, records: Sequence[Record], pixels: np.ndarray, cams: torch.Tensor, grading: GradeHead,
                    activated: torch.Tensor, targets: torch.Tensor, side: int) -> list[dict[str, object]]:
    activated = activated.cpu()
    preds = grading.decode(activated).tolist()
    all_probs, scores = grading.probs(activated), grading.score(activated)
    rows = []
    for i, (rec, image, cam, pred, target) in enumerate(zip(records, pixels, cams.cpu().numpy(), preds,
                                                            targets.tolist(), strict=True)):
        probs = None if all_probs is None else all_probs[i].tolist()
        score = None if scores is None else float(scores[i])
        name = f"{rec.id_code}.png"
        if not cv2.imwrite(str(out / name), cv2.cvtColor(overlay(np.asarray(image), cam,
                                                                 caption(pred, target, probs, score), side),
                                                         cv2.COLOR_RGB2BGR)):
            raise InferenceError(f"cannot write {out / name}")
        row: dict[str, object] = {"id_code": rec.id_code, "source": str(rec.path), "overlay": name, "pred": pred}
        if probs is not None:
            row.update(prob=probs[pred], cam_grade=target, cam_prob=probs[target])
        else:
            row.update(score=score, cam_grade=target)
        rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(explain, ExplainArgs, "ssl_dr.explain", argv)


if __name__ == "__main__":
    main()
