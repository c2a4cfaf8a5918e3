"""The files of a run folder, named once: every module that writes or reads one imports its name from here
(torch-free, the bottom layer, so the report and the launcher can use it too), and writes it with
``write_atomic`` so a killed job never leaves half a file that a resumed sweep or the report would trust."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

METRICS = "metrics.json"
ENVIRONMENT = "environment.json"
"""What the run ran on (``ssl_dr.training.environment``)."""
TEST_PREDICTIONS = "test_predictions.csv"
SPLIT = "split.csv"
"""Every labelled image's role in this run (train, val, test, unused)."""
BEST_CHECKPOINT = "checkpoints/best.ckpt"
"""The grader chosen on validation: what is tested, graded externally, predicted and exported with."""
LAST_CHECKPOINT = "checkpoints/last.ckpt"
"""The full training state ``resume`` continues from; deleted when the run finishes."""
VAL_PREDICTIONS = "val_predictions.csv"
"""The chosen model's validation predictions: what its operating point and temperature were fitted on."""
EXTERNAL_PREDICTIONS = "external_predictions.csv"
CHECKPOINT_SCREENING = "screening"
"""The key of ``checkpoints/best.ckpt`` holding the fitted temperature and referable threshold (for ``predict``)."""
RELIABILITY_PLOT = "reliability_{stage}.png"
"""The reliability diagram of one stage's grade probabilities (``test``, ``external``)."""
ROC_PLOT = "roc_{stage}.png"
"""The referable-DR ROC curve of one stage's referable scores (``ssl_dr.training.curves``)."""
PR_PLOT = "pr_{stage}.png"
"""The referable-DR precision-recall curve of one stage's referable scores."""


def write_atomic(path: Path, write: Callable[[Path], object]) -> Path:
    """``write(temporary path)`` then rename onto ``path`` (same folder, so the rename is atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
