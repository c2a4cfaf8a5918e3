"""``test_predictions.csv``: the grade predicted for every held-out image of a run, one row per image.

Why a file: ``test/qwk`` is one number; with the per-image predictions a researcher can recompute it,
bootstrap a confidence interval, look at the confusion matrix or compare two arms image by image. Under
DDP each rank scores its own shard of the test fold; the rows of all ranks are gathered and rank 0 writes
them, so the file always covers the whole fold (exactly once per image, see
``ssl_dr.data.datamodule._evaluation_sampler``) and ``test/qwk`` can be checked against it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import Callback

from ssl_dr.models.gather import gather_from_ranks

PREDICTIONS_NAME = "test_predictions.csv"


class TestPredictionWriter(Callback):
    """Collect ``test_step``'s outputs (``preds``; optional ``probs`` (B, 5) and ``score`` (B,)) and write
    ``path`` with ``id_code, grade, pred[, p0..p4][, score]``, sorted by the test set's order.

    An image's position in the test set comes from the loader's sampler (shuffle is off for testing), so
    no id has to travel through the batches.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._order: list[int] = []
        self._rows: list[dict[str, Any]] = []

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.test_dataloaders
        if isinstance(loader, (list, tuple)):
            raise ValueError("TestPredictionWriter expects one test dataloader")
        self._order = list(iter(loader.sampler))
        self._rows = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            raise TypeError(f"{type(pl_module).__name__}.test_step must return a dict with 'preds' "
                            "(and optionally 'probs', 'score') for TestPredictionWriter")
        preds = outputs["preds"].detach().cpu()
        grades = batch[1].detach().cpu()
        probs = outputs.get("probs")
        score = outputs.get("score")
        start = len(self._rows)
        for i in range(len(preds)):
            row: dict[str, Any] = {"index": self._order[start + i], "grade": int(grades[i]), "pred": int(preds[i])}
            if probs is not None:
                row.update({f"p{k}": float(p) for k, p in enumerate(probs[i].detach().cpu().tolist())})
            if score is not None:
                row["score"] = float(score[i])
            self._rows.append(row)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        rows = [row for part in gather_from_ranks(self._rows) for row in part]
        if trainer.is_global_zero:
            records = trainer.test_dataloaders.dataset.records
            table = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
            table.insert(0, "id_code", [records[i].id_code for i in table["index"]])
            write_csv(table.drop(columns="index"), self.path)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Temp file + rename: a crash never leaves a half-written prediction file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table.to_csv(tmp, index=False)
    os.replace(tmp, path)
