"""Grade a folder (or an APTOS-style ``test.csv``) of fundus photographs with a trained checkpoint.

``python -m ssl_dr.predict ckpt=outputs/.../checkpoints/best.ckpt images=test.csv out=submission.csv``

Why a tool and not a notebook cell: a submission is only as good as its input pipeline, and re-typing
the image size or forgetting Ben Graham silently costs kappa. Here everything comes from the checkpoint
(see ``inference``), every image is checked before the first forward pass, and the output is the
Kaggle APTOS submission (``id_code,diagnosis``; ``probs=true`` adds ``p0..p4``, or ``score`` for a regression
head). ``tta=`` averages the head's activation over flipped/rotated views before decoding: probabilities
for the classification and ordinal heads, the score for regression (measured cost and gain:
``docs/inference.md``). The head and, for regression, its validation-tuned thresholds come from the
checkpoint, and so do the temperature and the referable-DR threshold a fine-tune fitted on its validation slice:
the probabilities are tempered (the grades never change), and ``referable=true`` adds ``referable_score,referable``
(refer when the score reaches the threshold).
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
    InferenceError,
    InputArgs,
    arg,
    decoded_images,
    eval_transform,
    list_images,
    load_classifier,
    predict_activated,
    resolve_device,
    run_cli,
    side_file,
    tensor_batches,
)
from ssl_dr.inference.checkpoint import Screening, read_checkpoint
from ssl_dr.models.heads import GradeHead
from ssl_dr.models.screening import temper

if TYPE_CHECKING:
    import albumentations as A

    from ssl_dr.models.classifier import DRClassifier

PROB_COLUMNS = [f"p{g}" for g in range(NUM_GRADES)]
SCORE_COLUMN = "score"
REFERABLE_SCORE_COLUMN, REFERABLE_COLUMN = "referable_score", "referable"


@dataclass(kw_only=True)
class PredictArgs(InputArgs):
    """``python -m ssl_dr.predict`` arguments."""

    out: Path = arg(help="CSV to write: id_code,diagnosis[,p0..p4 | score][,referable_score,referable]")
    probs: bool = arg(False, help="also write the grade probabilities p0..p4 (classification, ordinal head; "
                                  "tempered when the checkpoint stores a temperature) or the continuous score "
                                  "(regression head)")
    referable: bool = arg(False, help="also write the referable-DR score and referable (1: score >= the "
                                      "checkpoint's validation threshold)")
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


def tempered(activated: torch.Tensor, screening: Screening | None) -> torch.Tensor:
    """The classification head's probabilities with the stored temperature: ``softmax(log p / T)``, i.e. the
    logits over T (``models.screening.temper``, as training fitted it); unchanged without one."""
    if screening is None or screening.temperature is None:
        return activated
    return torch.from_numpy(temper(activated.numpy(), screening.temperature))


def submission(ids: Sequence[str], grading: GradeHead, activated: torch.Tensor, with_probs: bool,
               screening: Screening | None = None, with_referable: bool = False) -> pd.DataFrame:
    """Kaggle APTOS format: ``id_code,diagnosis`` (+ ``p0..p4``, or ``score`` for regression; + ``referable_score,
    referable`` at the stored threshold). The grade is decoded from the untempered activation: a temperature
    changes the probabilities and the referable score, never the argmax."""
    table = pd.DataFrame({"id_code": list(ids), "diagnosis": grading.decode(activated).numpy()})
    calibrated = tempered(activated, screening)
    if with_probs:
        probs, score = grading.probs(calibrated), grading.score(calibrated)
        if probs is not None:
            table[PROB_COLUMNS] = probs.numpy()
        if score is not None:
            table[SCORE_COLUMN] = score.numpy()
    if with_referable and screening is not None:
        score = grading.referable(calibrated).double().numpy()
        table[REFERABLE_SCORE_COLUMN] = score
        table[REFERABLE_COLUMN] = (score >= screening.referable_threshold).astype(int)
    return table


def check_referable(ckpt: Path, screening: Screening | None) -> None:
    """``referable=true`` needs a finite stored threshold: say why there is none and how to get one."""
    if screening is not None and screening.has_threshold:
        return
    if screening is None:
        why = "stores no referable-DR threshold (written before checkpoints stored one)"
    elif screening.referable_target is None:
        why = "stores no referable-DR threshold (trained with evaluation.referable_target=null)"
    else:
        why = (f"stores a NaN referable-DR threshold (target {screening.referable_target}: its validation slice "
               "had referable or non-referable images only)")
    raise InferenceError(f"referable=true: {ckpt} {why}; re-train with evaluation.referable_target set (e.g. "
                         "'{sensitivity: 0.9}') and both sides in the validation slice, or drop referable=true")


def screening_summary(screening: Screening | None, with_referable: bool) -> str:
    """What predict applied from the checkpoint, for its summary line (empty when nothing)."""
    parts = []
    if screening is not None and screening.temperature is not None:
        parts.append(f"temperature {screening.temperature:.4g}")
    if with_referable and screening is not None:
        target = ", ".join(f"{k} {v:g}" for k, v in (screening.referable_target or {}).items())
        parts.append(f"referable at score >= {screening.referable_threshold:.6g} ({target} on validation)")
    return "".join(f", {part}" for part in parts)


def predict(args: PredictArgs) -> pd.DataFrame:
    """Write ``args.out`` (and, with ``skip_bad``, its ``.skipped.csv``); return the written table."""
    spec, screening = read_checkpoint(args.ckpt)
    if args.referable:
        check_referable(args.ckpt, screening)
    records = list_images(args.images, args.image_dir)
    device = resolve_device(args.device)
    model = load_classifier(args.ckpt, spec)
    skipped_csv = side_file(args.out, ".skipped.csv") if args.skip_bad else None
    with decoded_images(records, spec, args.num_workers, skipped_csv) as decoded:
        started = time.perf_counter()
        activated = predict_decoded(model.to(device), decoded, eval_transform(spec), args.batch_size, args.tta,
                                    device)
        seconds = time.perf_counter() - started
    table = submission([r.id_code for r in decoded.records], model.grading, activated, args.probs, screening,
                       args.referable)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out, index=False, float_format="%.6f")
    counts = np.bincount(table.diagnosis, minlength=NUM_GRADES)
    print(f"[ssl_dr] predicted {len(table)} image(s) on {device} ({model.grading.name} head, tta={args.tta}"
          f"{screening_summary(screening, args.referable)}, {seconds:.1f} s, "
          f"{len(table) / max(seconds, 1e-9):.1f} img/s) -> {args.out}; "
          f"grades 0-4: {'/'.join(map(str, counts))}")
    if skipped_csv is not None:
        print(f"[ssl_dr] skipped {len(decoded.skipped)} unreadable image(s), listed in {skipped_csv}")
    return table


def main(argv: Sequence[str] | None = None) -> None:
    run_cli(predict, PredictArgs, "ssl_dr.predict", argv)


if __name__ == "__main__":
    main()
