"""The run contract, in one place: who a job is (``JobIdentity``: its metrics.json keys, W&B name and alias, the
report's words), the name of every file in its folder, and ``write_atomic``, the one writer that never leaves half a
file for a resumed sweep or the report to trust (``move_folder_into_place``: the same for a folder built aside).
Torch-free and the bottom layer, so the launcher and the report use it too."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

FINETUNE = "finetune"
"""The paper's protocol and the default (conf/protocol/finetune.yaml); jobs older than protocols were fine-tuned."""


@dataclass(frozen=True)
class JobIdentity:
    """What tells one job of a sweep from another: the same six values in metrics.json, the W&B run's name and the
    grader's artifact alias, and the report's gaps and pairs."""

    arm: str
    label_fraction: float
    fold: int
    seed: int
    split_seed: int
    protocol: str = FINETUNE

    CONFIG_KEYS = {"arm": "arm", "label_fraction": "data.label_fraction", "fold": "data.fold", "seed": "seed",
                   "split_seed": "data.split_seed", "protocol": "protocol.name"}
    """Each field's key in the job's config (the protocol's sweep key is the ``protocol`` config group)."""

    @classmethod
    def from_values(cls, values: Mapping[str, Any]) -> JobIdentity:
        """From metrics.json's keys or config values (``protocol`` missing or None: fine-tuned)."""
        return cls(arm=str(values["arm"]), label_fraction=float(values["label_fraction"]), fold=int(values["fold"]),
                   seed=int(values["seed"]), split_seed=int(values["split_seed"]),
                   protocol=str(values.get("protocol") or FINETUNE))

    @classmethod
    def from_config(cls, cfg: Any) -> JobIdentity:
        """From a job's composed config (an OmegaConf DictConfig)."""
        from omegaconf import OmegaConf

        return cls.from_values({name: OmegaConf.select(cfg, key) for name, key in cls.CONFIG_KEYS.items()})

    def record(self) -> dict[str, Any]:
        """The identity's keys in metrics.json."""
        return asdict(self)

    def run_name(self) -> str:
        """The W&B run name: ``<arm>[-<protocol>]-frac<f>-fold<k>`` (the protocol where it is not the default)."""
        protocol = "" if self.protocol == FINETUNE else f"-{self.protocol}"
        return f"{self.arm}{protocol}-frac{self.label_fraction}-fold{self.fold}"

    def alias(self) -> str:
        """The tested grader's artifact alias: two partitions' fold k are different test sets, and a repetition
        may re-partition under one ``seed``, so both seeds are in it."""
        return f"frac{self.label_fraction}-fold{self.fold}-split{self.split_seed}-seed{self.seed}"

    def describe(self) -> str:
        """As the report prints a job (gaps, duplicates, collapsed runs); the protocol only where not the default."""
        graded = "" if self.protocol == FINETUNE else f" protocol={self.protocol}"
        return (f"arm={self.arm}{graded} fraction={self.label_fraction:g} fold={self.fold} seed={self.seed} "
                f"split_seed={self.split_seed}")


METRICS = "metrics.json"
ENVIRONMENT = "environment.json"
"""What the run ran on (``ssl_dr.training.environment``)."""
TEST_PREDICTIONS = "test_predictions.csv"
TRAIN_LOG = "train.log"
"""The job's story: Hydra names the log after the task module (``ssl_dr.train``)."""
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


def move_folder_into_place(tmp: Path, final: Path, is_complete: Callable[[], bool]) -> None:
    """Rename the finished folder ``tmp`` onto ``final`` (same parent, so the rename is atomic; an empty ``final`` is
    replaced). A lost race, another process's folder at ``final`` first: keep it when ``is_complete()``, else it is
    damaged and replaced by ``tmp``."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.exists():
            raise  # not a lost race: a real error
        if is_complete():
            return
        shutil.rmtree(final)
        os.replace(tmp, final)
