"""Who is train, val, test or unused in one run — the same for every arm, so comparisons are paired.

* folds: ``StratifiedKFold`` (``StratifiedGroupKFold`` when records carry a patient group) over the
  labelled records, seeded by ``split_seed``; the held-out fold is the test set;
* validation: a stratified slice of the training folds (fixed per fold, independent of the fraction);
* label fraction: a *nested* stratified subset of what remains — each grade's images are ranked once by
  a seeded permutation and the first ``round(fraction * n)`` are taken, so the 5 % subset lies inside the
  10 % one, and so on;
* everything else labelled is ``unused`` (kept in ``split.csv`` so nothing disappears silently).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ssl_dr.data.records import DataError, Record, labelled

ROLES = ("train", "val", "test", "unused")


@dataclass(frozen=True)
class SplitConfig:
    """The knobs of a split (``data.num_folds`` ... in config)."""

    num_folds: int = 5
    fold: int = 0
    split_seed: int = 42
    val_fraction: float = 0.15
    label_fraction: float = 1.0

    def validate(self) -> None:
        """Reject impossible settings with the config key to change."""
        if self.num_folds < 2:
            raise DataError(f"data.num_folds={self.num_folds}: need at least 2 folds")
        if not 0 <= self.fold < self.num_folds:
            raise DataError(f"data.fold={self.fold} is outside [0, {self.num_folds}): "
                            f"choose a fold from 0 to {self.num_folds - 1}")
        if not 0 < self.label_fraction <= 1:
            raise DataError(f"data.label_fraction={self.label_fraction} must be in (0, 1], e.g. 0.05 for 5%")
        if not 0 < self.val_fraction < 1:
            raise DataError(f"data.val_fraction={self.val_fraction} must be in (0, 1)")


def assign_folds(grades: np.ndarray, groups: Sequence[str | None], num_folds: int,
                 split_seed: int) -> np.ndarray:
    """Fold index per labelled image; grouped when every record has a group (patients never straddle)."""
    if len(grades) < num_folds:
        raise DataError(f"only {len(grades)} labelled images for data.num_folds={num_folds}")
    folds = np.empty(len(grades), dtype=int)
    placeholder = np.zeros(len(grades))
    if all(g is not None for g in groups):
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
        parts = splitter.split(placeholder, grades, groups=list(groups))
    else:
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
        parts = splitter.split(placeholder, grades)
    for k, (_, test_idx) in enumerate(parts):
        folds[test_idx] = k
    return folds


def stratified_take(grades: np.ndarray, fraction: float, rng_seed: int, min_per_grade: int = 1) -> np.ndarray:
    """Boolean mask taking ``round(fraction * n_g)`` (at least ``min_per_grade``) of each grade g.

    The ranking depends only on the seed and the images, not on ``fraction``, so masks for growing
    fractions are nested.
    """
    rng = np.random.default_rng(rng_seed)
    mask = np.zeros(len(grades), dtype=bool)
    for grade in np.unique(grades):
        members = np.flatnonzero(grades == grade)
        ranked = members[rng.permutation(len(members))]
        mask[ranked[: max(min_per_grade, round(fraction * len(members)))]] = True
    return mask


def _labelled_rows(records: Sequence[Record]) -> list[Record]:
    rows = labelled(records)
    if not rows:
        raise DataError("no labelled images found: fine-tuning needs a CSV with grades")
    return rows


def fold_table(records: Sequence[Record], num_folds: int, split_seed: int) -> pd.DataFrame:
    """``id_code, diagnosis, group, fold`` for every labelled record."""
    rows = _labelled_rows(records)
    grades = np.array([r.grade for r in rows], dtype=int)
    folds = assign_folds(grades, [r.group for r in rows], num_folds, split_seed)
    return pd.DataFrame({"id_code": [r.id_code for r in rows], "diagnosis": grades,
                         "group": [r.group or "" for r in rows], "fold": folds})


def stored_folds(records: Sequence[Record], num_folds: int, split_seed: int, folds_dir: Path) -> Path:
    """The dataset's fold CSV, written once per (labelled ids/grades/groups, k, seed) and then reused.

    Reading the stored file (rather than recomputing) keeps a published split fixed even if the
    splitting library changes; the name carries a fingerprint of the data so another dataset never
    reads it. Written to a temporary name and renamed, so a crash leaves no half file.
    """
    table = fold_table(records, num_folds, split_seed)
    digest = hashlib.sha256(table[["id_code", "diagnosis", "group"]].to_csv(index=False).encode()).hexdigest()[:12]
    path = Path(folds_dir) / f"folds-k{num_folds}-seed{split_seed}-{digest}.csv"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        table.to_csv(tmp, index=False)
        os.replace(tmp, path)
    return path


def read_folds(path: Path, records: Sequence[Record]) -> np.ndarray:
    """Fold per labelled record (in record order) from a fold CSV; it must cover exactly these images."""
    table = pd.read_csv(path, dtype={"id_code": str})
    by_id = dict(zip(table.id_code, table.fold, strict=True))
    rows = _labelled_rows(records)
    missing = [r.id_code for r in rows if r.id_code not in by_id]
    if missing or len(by_id) != len(rows):
        raise DataError(f"fold file {path} does not match the labelled images ({len(missing)} missing, "
                        f"{len(by_id)} listed vs {len(rows)} labelled); delete it to rebuild")
    return np.array([by_id[r.id_code] for r in rows], dtype=int)


def split_roles(records: Sequence[Record], cfg: SplitConfig, folds: np.ndarray | None = None) -> pd.DataFrame:
    """``id_code, diagnosis, role`` for every labelled record (the content of ``split.csv``).

    ``folds`` (per labelled record, e.g. from ``read_folds``) defaults to ``assign_folds``.
    """
    cfg.validate()
    rows = _labelled_rows(records)
    grades = np.array([r.grade for r in rows], dtype=int)
    if folds is None:
        folds = assign_folds(grades, [r.group for r in rows], cfg.num_folds, cfg.split_seed)
    roles = np.full(len(rows), "unused", dtype=object)
    roles[folds == cfg.fold] = "test"
    pool = np.flatnonzero(folds != cfg.fold)
    val = stratified_take(grades[pool], cfg.val_fraction, rng_seed=cfg.split_seed + 1000 * (cfg.fold + 1),
                          min_per_grade=0)
    roles[pool[val]] = "val"
    remaining = pool[~val]
    chosen = stratified_take(grades[remaining], cfg.label_fraction, rng_seed=cfg.split_seed + cfg.fold + 1)
    roles[remaining[chosen]] = "train"
    table = pd.DataFrame({"id_code": [r.id_code for r in rows], "diagnosis": grades, "role": roles})
    _check_train_grades(table, cfg)
    return table


def _check_train_grades(table: pd.DataFrame, cfg: SplitConfig) -> None:
    """A grade that exists in the data but has no training image cannot be learnt: say which."""
    missing = sorted(set(table.diagnosis) - set(table.loc[table.role == "train", "diagnosis"]))
    if missing:
        raise DataError(f"data.fold={cfg.fold}, data.label_fraction={cfg.label_fraction} leaves grade(s) "
                        f"{missing} without a training image; use a larger fraction or more data")


def records_with_role(records: Sequence[Record], table: pd.DataFrame, role: str) -> list[Record]:
    """The records ``split.csv`` assigns to ``role``, in the table's order."""
    wanted = set(table.loc[table.role == role, "id_code"])
    return [r for r in records if r.id_code in wanted]


def write_split(table: pd.DataFrame, path: Path) -> None:
    """Write ``split.csv`` (``id_code,diagnosis,role``)."""
    table.to_csv(path, index=False)
