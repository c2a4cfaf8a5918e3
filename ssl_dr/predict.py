"""Grade a folder (or an APTOS-style ``test.csv``) of fundus photographs with a trained checkpoint.

``python -m ssl_dr.predict ckpt=outputs/.../checkpoints/best.ckpt images=test.csv out=submission.csv``

Why a tool and not a notebook cell: a submission is only as good as its input pipeline, and re-typing
the image size or forgetting Ben Graham silently costs kappa. Here everything comes from the checkpoint
(see ``inference``), every image is checked before the first forward pass, and the output is the
Kaggle APTOS submission (``id_code,diagnosis``; ``probs=true`` adds ``p0..p4``, or ``score`` for a regression
head). ``tta=`` averages the head's activation over flipped/rotated views before decoding: probabilities
for the classification and ordinal heads, the score for regression (measured cost and gain:
``docs/inference.md``). The head and, for regression, its validation-tuned thresholds come from the
checkpoint.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ssl_dr.data.records import NUM_GRADES
from ssl_dr.inference import (
    TTA_MODES,
    Decoded,
    InputArgs,
    arg,
    decoded_images,
    eval_transform,
    list_images,
    load_classifier,
    predict_activated,
    read_spec,
    resolve_device,
    run_cli,
    side_file,
    tensor_batches,
)
from ssl_dr.models.heads import GradeHead

if TYPE_CHECKING:
    import albumentations as A

    from ssl_dr.models.classifier import DRClassifier

PROB_COLUMNS = [f"p{g}" for g in range(NUM_GRADES)]
SCORE_COLUMN = "score"


@dataclass(kw_only=True)
class PredictArgs(InputArgs):
    """``python -m ssl_dr.predict`` arguments."""

    out: Path = arg(help="CSV to write: id_code,diagnosis[,p0..p4 | score]")
    probs: bool = arg(False, help="also write the grade probabilities p0..p4 (classification, ordinal head) "
                                  "or the continuous score (regression head)")
    tta: str = arg("none", help="test-time augmentation", choices=TTA_MODES)


def predict_decoded(model: DRClassifier, decoded: Decoded, transform: A.Compose, batch_size: int, tta: str,
                    device: torch.device) -> torch.Tensor:
    """The head's TTA-averaged activation (``inference.predict_activated``) for the decoded images, in their
    order, on the CPU."""
    parts = []
    with tqdm(total=len(decoded.records), desc=f"predicting (tta={tta})", unit="img") as bar:
        for rows, images in tensor_batches(decoded, transform, batch_size):
            parts.append(predict_activated(model, images.to(device), tta).float().cpu())
            bar.update(rows.stop - rows.start)
    return torch.cat(parts)


def submission(ids: Sequence[str], grading: GradeHead, activated: torch.Tensor, with_probs: bool) -> pd.DataFrame:
    """Kaggle APTOS format: ``id_code,diagnosis`` (+ ``p0..p4``, or ``score`` for regression)."""
    table = pd.DataFrame({"id_code": list(ids), "diagnosis": grading.decode(activated).numpy()})
    if with_probs:
        probs, score = grading.probs(activated), grading.score(activated)
        if probs is not None:
            table[PROB_COLUMNS] = probs.numpy()
        if score is not None:
            table[SCORE_COLUMN] = score.numpy()
    return table


def predict(args: PredictArgs) -> pd.DataFrame:
    """Write ``args.out`` (and, with ``skip_bad``, its ``.skipped.csv``); return the written table."""
    spec = read_spec(args.ckpt)
    records = list_images(args.images, args.image_dir)
    device = resolve_device(args.device)
    model = load_classifier(args.ckpt, spec)
    skipped_csv = side_file(args.out, ".skipped.csv") if args.skip_bad else None
    with decoded_images(records, spec, args.num_workers, skipped_csv) as decoded:
        started = time.perf_counter()
        activated = predict_decoded(model.to(device), decoded, eval_transform(spec), args.batch_size, args.tta,
                                    device)
        seconds = time.perf_counter() - started
    table = submission([r.id_code for r in decoded.records], model.grading, activated, args.probs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    counts = np.bincount(table.diagnosis, minlength=NUM_GRADES)
    print(f"[ssl_dr] predicted {len(table)} image(s) on {device} ({model.grading.name} head, tta={args.tta}, "
          f"{seconds:.1f} s, {len(table) / max(seconds, 1e-9):.1f} img/s) -> {args.out}; "
          f"grades 0-4: {'/'.join(map(str, counts))}")
    if skipped_csv is not None:
        print(f"[ssl_dr] skipped {len(decoded.skipped)} unreadable image(s), listed in {skipped_csv}")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(predict, PredictArgs, "ssl_dr.predict", argv)


if __name__ == "__main__":
    main()
