"""``test_predictions.csv`` (and ``val_predictions.csv``): the grade predicted for every held-out (validation)
image of a run, one row per image.

Why a file: ``test/qwk`` is one number; with the per-image predictions a researcher can recompute it,
bootstrap a confidence interval, look at the confusion matrix or compare two arms image by image. Under
DDP each rank scores its own shard of the test fold; the rows of all ranks are gathered and rank 0 writes
them, so the file always covers the whole fold (exactly once per image, see
``ssl_dr.data.datamodule._evaluation_sampler``) and ``test/qwk`` can be checked against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from ssl_dr.models.gather import gather_from_ranks
from ssl_dr.run_contract import write_atomic


class PredictionWriter(Callback):
    """Collect ``test_step``'s (``stage="test"``) or ``validation_step``'s (``"validate"``) outputs (``preds``,
    ``referable``; optional ``probs`` (B, 5) and ``score`` (B,)) and write ``path`` with
    ``id_code, grade, pred, referable[, p0..p4][, score]``, sorted by the stage's data order.

    An image's position comes from the loader's sampler (shuffle is off for evaluation), so no id has to travel
    through the batches. The validation writer writes in ``trainer.validate`` only (the chosen checkpoint's pass),
    never during ``fit``'s validations.
    """

    def __init__(self, path: str | Path, stage: str = "test") -> None:
        if stage not in ("test", "validate"):
            raise ValueError(f"stage={stage!r}: test or validate")
        self.path, self.stage = Path(path), stage
        self._order: list[int] = []
        self._rows: list[dict[str, Any]] = []

    def _loader(self, trainer: L.Trainer) -> Any:
        loader = trainer.test_dataloaders if self.stage == "test" else trainer.val_dataloaders
        if isinstance(loader, (list, tuple)):
            raise ValueError(f"PredictionWriter expects one {self.stage} dataloader")
        return loader

    def _start(self, trainer: L.Trainer) -> None:
        self._order = list(iter(self._loader(trainer).sampler))
        self._rows = []

    def _collect(self, pl_module: L.LightningModule, outputs: Any, batch: Any) -> None:
        if not isinstance(outputs, dict) or "preds" not in outputs:
            raise TypeError(f"{type(pl_module).__name__}'s {self.stage} step must return a dict with 'preds' "
                            "(and optionally 'referable', 'probs', 'score') for PredictionWriter")
        preds = outputs["preds"].detach().cpu()
        grades = batch[1].detach().cpu()
        start = len(self._rows)
        for i in range(len(preds)):
            row: dict[str, Any] = {"index": self._order[start + i], "grade": int(grades[i]), "pred": int(preds[i])}
            if outputs.get("referable") is not None:
                row["referable"] = float(outputs["referable"][i])
            if outputs.get("probs") is not None:
                row.update({f"p{k}": float(p) for k, p in enumerate(outputs["probs"][i].detach().cpu().tolist())})
            if outputs.get("score") is not None:
                row["score"] = float(outputs["score"][i])
            self._rows.append(row)

    def _write(self, trainer: L.Trainer) -> None:
        rows = [row for part in gather_from_ranks(self._rows) for row in part]
        if trainer.is_global_zero and rows:
            records = self._loader(trainer).dataset.records
            table = pd.DataFrame(rows).sort_values("index").reset_index(drop=True)
            table.insert(0, "id_code", [records[i].id_code for i in table["index"]])
            write_csv(table.drop(columns="index"), self.path)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "test":
            self._start(trainer)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "test":
            self._collect(pl_module, outputs, batch)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "test":
            self._write(trainer)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "validate" and trainer.state.fn == TrainerFn.VALIDATING:
            self._start(trainer)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.stage == "validate" and trainer.state.fn == TrainerFn.VALIDATING:
            self._collect(pl_module, outputs, batch)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.stage == "validate" and trainer.state.fn == TrainerFn.VALIDATING:
            self._write(trainer)


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """Temp file + rename: a crash never leaves a half-written prediction file."""
    write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
