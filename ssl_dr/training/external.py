"""External validation: grade the whole external set (``test_data=<option>``) with a job's chosen model.

The model is the checkpoint selected on validation (``checkpoints/best.ckpt``, the one tested on the held-out
fold), read as ``predict`` reads it (``ssl_dr.inference``: the checkpoint's inference spec, its ``eval``
transform, ``predict_activated`` without TTA), on images the image cache preprocessed exactly as the training
set (``ssl_dr.data.external``). The figures are the test fold's, under ``external/``: the same torchmetrics
classes and arguments as ``DRClassifier`` scores ``test/*`` with (QWK, accuracy, the paper's kappa, referable
AUROC, the confusion matrix) and what ``metrics.confusion_summary`` reads off that matrix; the loss is left out
(the inference path keeps the head's activation, not its raw outputs). Every image's prediction goes to
``external_predictions.csv``, in ``test_predictions.csv``'s columns.

It runs in one process (DDP rank 0 only), so its metrics never synchronise across ranks
(``sync_on_compute=False``: the other ranks have left). Inference runs in float32, as ``predict`` does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig
from torchmetrics import Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassCohenKappa, MulticlassConfusionMatrix

from ssl_dr.data.external import ExternalSet
from ssl_dr.data.records import NUM_GRADES, Record
from ssl_dr.inference import Decoded, eval_transform, load_classifier, predict_activated, read_spec, tensor_batches
from ssl_dr.models.heads import GradeHead
from ssl_dr.models.metrics import KaggleKappa, ReferableAUROC, confusion_summary, grades_predicted
from ssl_dr.run_contract import EXTERNAL_PREDICTIONS
from ssl_dr.training.predictions import write_csv

log = logging.getLogger(__name__)

PREFIX = "external"


def grade_external(cfg: DictConfig, external: ExternalSet | None, chosen: Path, out_dir: Path) -> dict[str, Any]:
    """``external/*`` scores of the checkpoint ``chosen`` on the external set (``{}`` without one), and its
    ``external_predictions.csv`` in ``out_dir``. A fine-tune that wrote no checkpoint (``trainer.fast_dev_run``)
    has nothing chosen to grade: said in one line, ``{}``."""
    if external is None:
        return {}
    if not chosen.is_file():
        log.info(f"no chosen checkpoint ({chosen}; trainer.fast_dev_run writes none): the external set "
                 f"{external.root} is not graded")
        return {}
    spec = read_spec(chosen)
    cache = external.cache
    if (spec.image_size, spec.ben_graham, spec.mask) != (cache.size, cache.ben_graham, cache.mask):
        raise ValueError(f"{chosen} was trained at {spec.image_size} px (ben_graham={spec.ben_graham}, mask="
                         f"{spec.mask}), the external cache {cache.path} holds {cache.size} px "
                         f"({cache.ben_graham}, {cache.mask})")
    if cache.ids != [r.id_code for r in external.records]:
        raise ValueError(f"the external cache {cache.path} does not hold the external records in id order")
    device = torch.device("cpu") if cfg.trainer.get("accelerator") == "cpu" else \
        torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_classifier(chosen, spec).to(device)
    decoded = Decoded(external.records, cache.array, [])
    activated = torch.cat([predict_activated(model, images.to(device)).float().cpu()
                           for _, images in tensor_batches(decoded, eval_transform(spec), cfg.data.batch_size)])
    grades = torch.tensor([r.grade for r in external.records])
    scores = external_scores(model.grading, activated, grades)
    scores[f"{PREFIX}/root"] = str(external.root)
    write_csv(prediction_table(external.records, model.grading, activated), out_dir / EXTERNAL_PREDICTIONS)
    log.info(f"external set {external.root} ({len(grades)} images, checkpoint {chosen.name}): external/qwk "
             f"{scores[f'{PREFIX}/qwk']:.4f}, referable AUROC {scores[f'{PREFIX}/auroc_referable']:.3f}, "
             f"{scores[f'{PREFIX}/grades_predicted']} grade(s) predicted")
    return scores


def external_scores(grading: GradeHead, activated: torch.Tensor, grades: torch.Tensor) -> dict[str, Any]:
    """The test fold's figures for these predictions (``DRClassifier._score`` and ``_log_confusion``): the
    same metric classes, fed the same decoded grades, cumulative and referable scores."""
    preds = grading.decode(activated)
    metrics: dict[str, tuple[Metric, torch.Tensor]] = {
        "qwk": (MulticlassCohenKappa(NUM_GRADES, weights="quadratic", sync_on_compute=False), preds),
        "acc": (MulticlassAccuracy(NUM_GRADES, average="micro", sync_on_compute=False), preds),
        "qwk_kaggle": (KaggleKappa(sync_on_compute=False), grading.cumulative(activated)),
        "auroc_referable": (ReferableAUROC(sync_on_compute=False), grading.referable(activated)),
    }
    scores: dict[str, Any] = {f"{PREFIX}/{name}": float(metric(value, grades)) for name, (metric, value) in
                              metrics.items()}
    confusion = MulticlassConfusionMatrix(NUM_GRADES, sync_on_compute=False)(preds, grades)
    scores.update({f"{PREFIX}/{name}": value for name, value in confusion_summary(confusion).items()})
    scores[f"{PREFIX}/confusion"] = confusion.long().tolist()
    scores[f"{PREFIX}/grades_predicted"] = grades_predicted(scores[f"{PREFIX}/confusion"])
    scores[f"{PREFIX}/num_images"] = len(grades)
    return scores


def prediction_table(records: Sequence[Record], grading: GradeHead, activated: torch.Tensor) -> pd.DataFrame:
    """``id_code, grade, pred, referable[, p0..p4][, score]`` of ``records`` (rows of ``activated``):
    ``test_predictions.csv``'s columns (``DRClassifier._prediction``, ``PredictionWriter``)."""
    table = pd.DataFrame({"id_code": [r.id_code for r in records], "grade": [r.grade for r in records],
                          "pred": grading.decode(activated).tolist(),
                          "referable": grading.referable(activated).tolist()})
    probs, score = grading.probs(activated), grading.score(activated)
    if probs is not None:
        for k in range(probs.shape[1]):
            table[f"p{k}"] = probs[:, k].tolist()
    if score is not None:
        table["score"] = score.tolist()
    return table
