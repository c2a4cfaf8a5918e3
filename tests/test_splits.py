"""Folds partition the labelled set; validation and fractions are stratified and nested; bad settings
fail with the config key to change."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_dr.data.records import DataError, Record
from ssl_dr.data.splits import SplitConfig, assign_folds, read_folds, split_roles, stored_folds, stratified_take

MIX = np.array([0.49, 0.10, 0.27, 0.05, 0.08]) / 0.99


def make_records(n: int = 400, unlabelled: int = 20, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    grades = rng.choice(5, size=n, p=MIX)
    recs = [Record(f"img{i:04d}", Path(f"/x/img{i:04d}.png"), int(g)) for i, g in enumerate(grades)]
    return recs + [Record(f"unl{i:03d}", Path(f"/x/unl{i:03d}.png"), None) for i in range(unlabelled)]


def test_folds_partition_labelled_set_and_are_stratified():
    recs = make_records()
    tests = [set(split_roles(recs, SplitConfig(fold=k)).query("role == 'test'").id_code) for k in range(5)]
    all_ids = {r.id_code for r in recs if r.grade is not None}
    assert set().union(*tests) == all_ids
    assert sum(len(t) for t in tests) == len(all_ids)  # disjoint
    grades = np.array([r.grade for r in recs if r.grade is not None])
    folds = assign_folds(grades, [None] * len(grades), 5, 42)
    overall = np.bincount(grades, minlength=5) / len(grades)
    for k in range(5):
        share = np.bincount(grades[folds == k], minlength=5) / (folds == k).sum()
        assert np.abs(share - overall).max() < 0.03


def test_unlabelled_never_in_split_and_roles_cover_labelled():
    recs = make_records()
    table = split_roles(recs, SplitConfig(label_fraction=0.25))
    assert not table.id_code.str.startswith("unl").any()
    assert set(table.role) == {"train", "val", "test", "unused"}
    assert len(table) == 400


def test_fractions_nested_and_stratified_and_val_fixed():
    recs = make_records()
    fractions = [0.05, 0.1, 0.25, 0.5, 1.0]
    tables = [split_roles(recs, SplitConfig(fold=2, label_fraction=f)) for f in fractions]
    trains = [set(t.query("role == 'train'").id_code) for t in tables]
    for small, big in zip(trains, trains[1:], strict=False):
        assert small < big
    vals = {frozenset(t.query("role == 'val'").id_code) for t in tables}
    tests = {frozenset(t.query("role == 'test'").id_code) for t in tables}
    assert len(vals) == 1 and len(tests) == 1
    assert tables[-1].query("role == 'unused'").empty
    full = tables[-1].query("role == 'train'").diagnosis.value_counts()
    for frac, table in zip(fractions, tables, strict=True):
        counts = table.query("role == 'train'").diagnosis.value_counts()
        for grade, n in full.items():
            assert counts[grade] == max(1, round(frac * n))


def test_split_depends_on_split_seed_only():
    recs = make_records()
    a = split_roles(recs, SplitConfig(split_seed=1))
    b = split_roles(recs, SplitConfig(split_seed=1))
    c = split_roles(recs, SplitConfig(split_seed=2))
    assert a.equals(b)
    assert not a.equals(c)


def test_stratified_take_nested():
    grades = np.repeat(np.arange(5), [50, 10, 30, 5, 5])
    masks = [stratified_take(grades, f, rng_seed=3) for f in (0.1, 0.3, 0.6)]
    assert (masks[0] <= masks[1]).all() and (masks[1] <= masks[2]).all()


def test_grouped_folds_keep_patients_together():
    rng = np.random.default_rng(0)
    grades = rng.choice(5, size=300, p=MIX)
    groups = [f"p{i // 2}" for i in range(300)]
    folds = assign_folds(grades, groups, 5, 0)
    for i in range(0, 300, 2):
        assert folds[i] == folds[i + 1]


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"fold": 5}, "data.fold=5"), ({"fold": -1}, "data.fold=-1"),
    ({"label_fraction": 0.0}, "data.label_fraction=0.0"), ({"label_fraction": 1.5}, "data.label_fraction=1.5"),
    ({"num_folds": 1}, "data.num_folds=1"), ({"val_fraction": 1.0}, "data.val_fraction=1.0"),
])
def test_impossible_settings_name_the_field(kwargs, field):
    with pytest.raises(DataError, match=field.replace(".", r"\.")):
        split_roles(make_records(), SplitConfig(**kwargs))


def test_grade_without_training_image_is_named():
    recs = [r for r in make_records(100) if r.grade != 3] + [Record("rare", Path("/x/rare.png"), 3)]
    grades = np.array([r.grade for r in recs if r.grade is not None])
    rare_fold = assign_folds(grades, [None] * len(grades), 5, 42)[-1]
    with pytest.raises(DataError, match=r"grade\(s\) \[3\] without a training image"):
        split_roles(recs, SplitConfig(fold=int(rare_fold)))


def test_fold_file_written_once_and_agrees_with_split(tmp_path):
    recs = make_records()
    path = stored_folds(recs, 5, 42, tmp_path)
    assert stored_folds(recs, 5, 42, tmp_path) == path and len(list(tmp_path.iterdir())) == 1
    folds = pd.read_csv(path, dtype={"id_code": str})
    assert list(folds.columns) == ["id_code", "diagnosis", "group", "fold"] and len(folds) == 400
    table = split_roles(recs, SplitConfig(fold=3), read_folds(path, recs))
    assert set(table.query("role == 'test'").id_code) == set(folds.query("fold == 3").id_code)
    assert table.equals(split_roles(recs, SplitConfig(fold=3)))
    assert stored_folds(recs, 5, 7, tmp_path) != path  # another seed, another file
    assert stored_folds(recs[:300], 5, 42, tmp_path) != path  # other data, another file


def test_stored_folds_are_read_not_recomputed(tmp_path):
    recs = make_records()
    path = stored_folds(recs, 5, 42, tmp_path)
    table = pd.read_csv(path, dtype={"id_code": str})
    table["fold"] = (table.fold + 1) % 5  # a user's edited (cited) split is honoured
    table.to_csv(path, index=False)
    assert (read_folds(path, recs) == table.fold.to_numpy()).all()
    with pytest.raises(DataError, match="does not match the labelled images"):
        read_folds(path, recs[:100])
