"""Who is train, val, test or unused in one run — the same for every arm, so comparisons are paired.

Everything works in units of patients (a record's ``group``; a record without one is its own patient): no patient
ever has images in two roles, because one eye scored against a model trained on the other eye inflates every
score. Folds are stratified by grade (by patient once records carry one) and seeded by ``split_seed``; the
held-out fold is the test set. A label fraction is, per worst-grade stratum, a prefix of one seeded order of the
training patients, so 5 % lies inside 10 % and so on, and every grade of the training folds keeps a training
patient. The validation slice (``val_protocol``) is drawn inside the fraction by default, so a run reads at most
its fraction of the labels; ``fixed`` keeps the older layout. Every other labelled record is ``unused`` (kept in
``split.csv``). The rules in full: docs/protocol.md, "How a split is drawn".
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ssl_dr.data.records import Record, labelled
from ssl_dr.errors import DataError
from ssl_dr.run_contract import write_atomic

ROLES = ("train", "val", "test", "unused")
VAL_PROTOCOLS = ("within_fraction", "fixed")
MAX_LISTED = 5


@dataclass(frozen=True)
class SplitConfig:
    """The knobs of a split (``data.num_folds`` ... in config)."""

    num_folds: int = 5
    fold: int = 0
    split_seed: int = 42
    val_fraction: float = 0.2
    label_fraction: float = 1.0
    val_protocol: str = "within_fraction"

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
        if self.val_protocol not in VAL_PROTOCOLS:
            raise DataError(f"data.val_protocol={self.val_protocol!r} is not one of {list(VAL_PROTOCOLS)}")


def patient_keys(ids: Sequence[str], groups: Sequence[str | None]) -> list[str]:
    """One key per record naming its patient: the group, or the record itself when it has none.

    The prefixes keep a group called like some image id from merging with that image.
    """
    return [f"g:{g}" if g else f"i:{i}" for i, g in zip(ids, groups, strict=True)]


def assign_folds(grades: np.ndarray, groups: Sequence[str | None], num_folds: int,
                 split_seed: int) -> np.ndarray:
    """Fold index per labelled image; grouped as soon as any record has a group (patients never straddle).

    Records without a group are then their own patient; a fully ungrouped set keeps plain
    ``StratifiedKFold``, so its stored fold files stay as they were.
    """
    if len(grades) < num_folds:
        raise DataError(f"only {len(grades)} labelled images for data.num_folds={num_folds}")
    folds = np.empty(len(grades), dtype=int)
    placeholder = np.zeros(len(grades))
    if any(groups):
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
        parts = splitter.split(placeholder, grades, groups=patient_keys([str(i) for i in range(len(grades))], groups))
    else:
        splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=split_seed)
        parts = splitter.split(placeholder, grades)
    for k, (_, test_idx) in enumerate(parts):
        folds[test_idx] = k
    return folds


def nested_prefix(sizes: Sequence[int], budget: int, minimum: int = 1) -> int:
    """How many of ``sizes`` (images per patient, in rank order) to take: the longest prefix whose total
    does not exceed ``budget``, but at least ``minimum`` patients.

    A prefix of a fixed order (rather than skipping a patient that does not fit and trying the next)
    is what keeps a smaller budget's selection inside a larger one's.
    """
    total = np.cumsum(np.asarray(sizes, dtype=int))
    return max(min(minimum, len(total)), int(np.searchsorted(total, budget, side="right")))


def val_count(n: int, keep: int, val_fraction: float) -> int:
    """Validation patients among the first ``n`` of a stratum whose first ``keep`` must train.

    About ``val_fraction * n`` (half up), at least one once there is a patient beyond ``keep``, never
    one of the ``keep``. It grows by 0 or 1 per patient, so marking patient ``i`` as val when
    ``val_count(i + 1) > val_count(i)`` gives exactly ``val_count(n)`` val patients in every prefix.
    """
    if n <= keep:
        return 0
    return min(n - keep, max(1, math.floor(val_fraction * n + 0.5)))


def _budget(fraction: float, images: int) -> int:
    """``floor(fraction * images)``; the epsilon keeps e.g. 0.29 * 100 from flooring to 28."""
    return math.floor(fraction * images + 1e-9)


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
        write_atomic(path, lambda tmp: table.to_csv(tmp, index=False))
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

    ``folds`` (per labelled record, e.g. from ``read_folds``) defaults to ``assign_folds``; it must keep
    each patient in one fold. Given the folds, roles depend on the records' ids, grades and groups and on
    ``split_seed``/``fold``/the fractions, never on the order of the records.
    """
    cfg.validate()
    rows = _labelled_rows(records)
    grades = np.array([r.grade for r in rows], dtype=int)
    if folds is None:
        folds = assign_folds(grades, [r.group for r in rows], cfg.num_folds, cfg.split_seed)
    keys = patient_keys([r.id_code for r in rows], [r.group for r in rows])
    _check_one_fold_per_patient(keys, folds)
    roles = np.full(len(rows), "test", dtype=object)
    pool = np.flatnonzero(folds != cfg.fold)
    patient_role = _pool_roles([keys[i] for i in pool], grades[pool], cfg)
    roles[pool] = [patient_role[keys[i]] for i in pool]
    table = pd.DataFrame({"id_code": [r.id_code for r in rows], "diagnosis": grades, "role": roles})
    _check_train_grades(table, cfg)
    return table


def _pool_roles(keys: Sequence[str], grades: np.ndarray, cfg: SplitConfig) -> dict[str, str]:
    """Role per patient of the training folds (see the module docstring for the rules)."""
    sizes: dict[str, int] = {}
    worst: dict[str, int] = {}
    grades_of: dict[str, set[int]] = {}
    for key, grade in zip(keys, grades.tolist(), strict=True):
        sizes[key] = sizes.get(key, 0) + 1
        worst[key] = max(worst.get(key, grade), grade)
        grades_of.setdefault(key, set()).add(grade)
    patients = sorted(sizes)  # the order of the records must not matter
    order = [patients[i] for i in np.random.default_rng([cfg.split_seed, cfg.fold]).permutation(len(patients))]
    # the per-grade minimum for a grade that is nobody's worst: its first-ranked patient, moved to the front
    only_better_eyes = set(grades.tolist()) - set(worst.values())
    forced = {next(p for p in order if grade in grades_of[p]) for grade in only_better_eyes}
    roles: dict[str, str] = {}
    for stratum in sorted(set(worst.values())):
        members = [p for p in order if worst[p] == stratum]
        members = [p for p in members if p in forced] + [p for p in members if p not in forced]
        keep = max(1, sum(p in forced for p in members))
        roles.update(_stratum_roles(members, [sizes[p] for p in members], keep, cfg))
    return roles


def _stratum_roles(members: list[str], sizes: list[int], keep: int, cfg: SplitConfig) -> dict[str, str]:
    """Roles of one stratum's patients in rank order, whose first ``keep`` always train."""
    v, f = cfg.val_fraction, cfg.label_fraction
    roles = {}
    if cfg.val_protocol == "fixed":
        rest = len(members) - val_count(len(members), keep, v)  # the val slice: the end of the order
        take = nested_prefix(sizes[:rest], _budget(f, sum(sizes[:rest])), keep)
        for i, patient in enumerate(members):
            roles[patient] = "train" if i < take else "unused" if i < rest else "val"
        return roles
    take = nested_prefix(sizes, _budget(f, sum(sizes)), keep)
    for i, patient in enumerate(members):
        marked_val = val_count(i + 1, keep, v) > val_count(i, keep, v)
        roles[patient] = "unused" if i >= take else "val" if marked_val else "train"
    return roles


def _check_one_fold_per_patient(keys: Sequence[str], folds: np.ndarray) -> None:
    """A patient split across folds would be tested on an eye whose twin trained the model: refuse."""
    seen: dict[str, int] = {}
    split = sorted({k[2:] for k, fold in zip(keys, folds.tolist(), strict=True) if seen.setdefault(k, fold) != fold})
    if split:
        more = f" and {len(split) - MAX_LISTED} more" if len(split) > MAX_LISTED else ""
        raise DataError(f"the fold file puts patient(s) {split[:MAX_LISTED]}{more} in more than one fold: "
                        "give each patient one fold, or delete the file to rebuild it")


def _check_train_grades(table: pd.DataFrame, cfg: SplitConfig) -> None:
    """A grade that exists in the data but has no training image cannot be learnt: say which."""
    missing = sorted(set(table.diagnosis) - set(table.loc[table.role == "train", "diagnosis"]))
    if missing:
        raise DataError(f"data.fold={cfg.fold}, data.label_fraction={cfg.label_fraction} leaves grade(s) "
                        f"{missing} without a training image; use a larger fraction or more data")


def label_counts(table: pd.DataFrame, cfg: SplitConfig) -> dict[str, int | str]:
    """How many labels a run read, against how many its training folds offered (for ``metrics.json``).

    ``labels/read`` = train + val is the honest x-axis of a label-efficiency curve: under ``fixed``
    it exceeds ``label_fraction x labels/available`` by the whole validation slice.
    """
    train, val = int((table.role == "train").sum()), int((table.role == "val").sum())
    return {"labels/train": train, "labels/val": val, "labels/read": train + val,
            "labels/available": int((table.role != "test").sum()), "val_protocol": cfg.val_protocol}


def records_with_role(records: Sequence[Record], table: pd.DataFrame, role: str) -> list[Record]:
    """The records ``split.csv`` assigns to ``role``, in the table's order."""
    wanted = set(table.loc[table.role == role, "id_code"])
    return [r for r in records if r.id_code in wanted]


def write_split(table: pd.DataFrame, path: Path) -> None:
    """Write ``split.csv`` (``id_code,diagnosis,role``)."""
    table.to_csv(path, index=False)
