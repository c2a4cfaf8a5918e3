"""Folds partition the labelled set; validation and fractions are stratified, nested and chosen by patient
(no patient in two roles); a run reads no more labels than its fraction says; bad settings fail with the
config key to change."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ssl_dr.data.records import Record
from ssl_dr.data.splits import (
    SplitConfig,
    assign_folds,
    label_counts,
    nested_prefix,
    read_folds,
    split_roles,
    stored_folds,
    val_count,
)
from ssl_dr.errors import DataError

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


def test_fixed_protocol_fractions_nested_and_stratified_and_val_fixed():
    recs = make_records()
    fractions = [0.05, 0.1, 0.25, 0.5, 1.0]
    tables = [split_roles(recs, SplitConfig(fold=2, label_fraction=f, val_protocol="fixed")) for f in fractions]
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
        for grade, n in full.items():  # one image per patient here: floor of the fraction, at least one
            assert counts[grade] == max(1, math.floor(frac * n + 1e-9))


def test_split_depends_on_split_seed_only():
    recs = make_records()
    a = split_roles(recs, SplitConfig(split_seed=1))
    b = split_roles(recs, SplitConfig(split_seed=1))
    c = split_roles(recs, SplitConfig(split_seed=2))
    assert a.equals(b)
    assert not a.equals(c)


def test_nested_prefix_is_a_growing_prefix_within_budget():
    sizes = [2, 2, 1, 2, 2, 1, 2]
    takes = [nested_prefix(sizes, budget) for budget in range(13)]
    assert takes == sorted(takes)  # a larger budget never takes fewer patients: nested
    for budget, take in enumerate(takes):
        assert sum(sizes[:take]) <= budget or take == 1  # the one-patient minimum is the only excess
        assert take == len(sizes) or sum(sizes[:take + 1]) > budget  # the longest such prefix
    assert nested_prefix(sizes, 0, minimum=3) == 3 and nested_prefix([], 5) == 0


def test_val_count_grows_by_at_most_one_and_spares_the_kept():
    counts = [val_count(n, keep=2, val_fraction=0.2) for n in range(30)]
    assert counts[:3] == [0, 0, 0] and counts[3] == 1  # a val patient as soon as one is beyond the kept
    assert all(b - a in (0, 1) for a, b in zip(counts, counts[1:], strict=False))
    assert counts[20] == 4 and all(c <= max(0, n - 2) for n, c in enumerate(counts))
    assert val_count(2, keep=1, val_fraction=0.9) == 1  # the kept patient still trains


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
    ({"val_protocol": "nested"}, "data.val_protocol='nested'"),
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


# --- patients: a two-eye data set (every patient two images, both eyes' grades correlated) ---------------

FRACTIONS = (0.05, 0.1, 0.25, 0.5, 1.0)
PROTOCOLS = ("within_fraction", "fixed")


def make_two_eye_records(patients: int = 250, seed: int = 0) -> list[Record]:
    rng = np.random.default_rng(seed)
    first = rng.choice(5, size=patients, p=MIX)
    second = np.clip(first + rng.choice([-1, 0, 0, 0, 1], size=patients), 0, 4)
    recs = [Record(f"{p}_{eye}", Path(f"/x/{p}_{eye}.png"), int(g), group=f"p{p}")
            for p in range(patients) for eye, g in (("left", first[p]), ("right", second[p]))]
    return recs + [Record("unl0", Path("/x/unl0.png"), None)]


def _patients(recs: list[Record], table: pd.DataFrame) -> pd.DataFrame:
    """The split table with each image's patient and that patient's worst grade."""
    group = {r.id_code: r.group for r in recs}
    table = table.assign(patient=table.id_code.map(group))
    return table.assign(worst=table.groupby("patient").diagnosis.transform("max"))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_no_patient_in_two_roles(protocol):
    recs = make_two_eye_records()
    for fold in range(5):
        for fraction in FRACTIONS:
            table = _patients(recs, split_roles(recs, SplitConfig(fold=fold, label_fraction=fraction,
                                                                   val_protocol=protocol)))
            roles_per_patient = table.groupby("patient").role.nunique()
            assert (roles_per_patient == 1).all(), roles_per_patient[roles_per_patient > 1].index[:5].tolist()


def test_labels_read_bounded_by_the_fraction():
    """train + val <= fraction x available + G x P, where G = grades in the training folds (the per-grade
    minimum adds at most one patient per grade) and P = the most images a patient has (2 here); and
    exactly <= fraction x available once every worst-grade stratum's budget already holds a patient."""
    recs = make_two_eye_records()
    for fold in range(5):
        for fraction in FRACTIONS:
            cfg = SplitConfig(fold=fold, label_fraction=fraction)
            table = _patients(recs, split_roles(recs, cfg))
            counts = label_counts(table, cfg)
            pool = table[table.role != "test"]
            assert counts["labels/available"] == len(pool) and counts["labels/read"] == len(pool) - (
                pool.role == "unused").sum()
            assert counts["labels/read"] <= fraction * len(pool) + pool.diagnosis.nunique() * 2
            if all(math.floor(fraction * n) >= 2 for n in pool.worst.value_counts()):
                assert counts["labels/read"] <= fraction * len(pool)


def test_fixed_protocol_reads_the_whole_val_slice_on_top():
    recs = make_two_eye_records()
    for fraction in FRACTIONS:
        cfg = SplitConfig(label_fraction=fraction, val_protocol="fixed")
        counts = label_counts(split_roles(recs, cfg), cfg)
        rest = counts["labels/available"] - counts["labels/val"]
        assert counts["labels/val"] >= 0.15 * counts["labels/available"] and counts["val_protocol"] == "fixed"
        assert counts["labels/train"] <= fraction * rest + 5 * 2


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_val_has_each_grade_with_two_patients_and_train_every_grade(protocol):
    recs = make_two_eye_records()
    two_patient_strata = 0
    for fold in range(5):
        for fraction in FRACTIONS:
            table = _patients(recs, split_roles(recs, SplitConfig(fold=fold, label_fraction=fraction,
                                                                   val_protocol=protocol)))
            chosen = table[table.role.isin(["train", "val"])]
            patients_per_grade = chosen.groupby("worst").patient.nunique()
            val_grades = set(table.query("role == 'val'").diagnosis)
            for grade, patients in patients_per_grade.items():
                if patients >= 2:
                    assert grade in val_grades, (fold, fraction, grade)
                two_patient_strata += patients == 2
            assert set(table.query("role == 'train'").diagnosis) == set(table.query("role != 'test'").diagnosis)
    assert protocol == "fixed" or two_patient_strata > 0  # the 'at least one' case did occur


def test_within_fraction_train_and_val_nested_and_independent_of_val_fraction():
    recs = make_two_eye_records()
    for fold in range(5):
        tables = [split_roles(recs, SplitConfig(fold=fold, label_fraction=f)) for f in FRACTIONS]
        for role in ("train", "val"):
            sets = [set(t.loc[t.role == role, "id_code"]) for t in tables]
            assert all(small <= big for small, big in zip(sets, sets[1:], strict=False)), role
        read = [set(t.query("role in ['train', 'val']").id_code) for t in tables]
        assert all(small < big for small, big in zip(read, read[1:], strict=False))
        assert tables[-1].query("role == 'unused'").empty
        other_val = split_roles(recs, SplitConfig(fold=fold, label_fraction=0.25, val_fraction=0.35))
        assert set(other_val.query("role in ['train', 'val']").id_code) == read[2]  # same labels read


def test_fixed_protocol_val_independent_of_fraction_and_train_nested():
    recs = make_two_eye_records()
    tables = [split_roles(recs, SplitConfig(fold=1, label_fraction=f, val_protocol="fixed")) for f in FRACTIONS]
    assert len({frozenset(t.query("role == 'val'").id_code) for t in tables}) == 1
    trains = [set(t.query("role == 'train'").id_code) for t in tables]
    assert all(small < big for small, big in zip(trains, trains[1:], strict=False))


def test_roles_deterministic_and_independent_of_record_order():
    recs = make_two_eye_records()
    cfg = SplitConfig(fold=3, label_fraction=0.1)
    folds = assign_folds(np.array([r.grade for r in recs[:-1]]), [r.group for r in recs[:-1]], 5, 42)
    first = split_roles(recs, cfg, folds)
    assert first.equals(split_roles(recs, cfg, folds))
    shuffled = np.random.default_rng(1).permutation(len(recs) - 1)
    again = split_roles([recs[i] for i in shuffled], cfg, folds[shuffled])
    assert again.set_index("id_code").role.sort_index().equals(first.set_index("id_code").role.sort_index())
    assert not first.equals(split_roles(recs, SplitConfig(fold=3, label_fraction=0.1, split_seed=7), folds))


def test_a_grade_seen_only_in_better_eyes_still_trains():
    """Grade 1 appears only beside a grade-3 eye, so it is nobody's worst grade: one such patient is
    pulled into training even at 5 %."""
    rng = np.random.default_rng(2)
    pairs = [(g, g) for g in rng.choice([0, 2, 3, 4], size=150, p=[0.6, 0.25, 0.05, 0.1])] + [(1, 3)] * 10
    recs = [Record(f"{p}_{eye}", Path("/x"), int(g), group=str(p))
            for p, pair in enumerate(pairs) for eye, g in zip(("l", "r"), pair, strict=True)]
    for fold in range(5):
        table = split_roles(recs, SplitConfig(fold=fold, label_fraction=0.05))
        assert 1 in set(table.query("role == 'train'").diagnosis)


def test_partly_grouped_records_keep_each_patient_in_one_fold():
    recs = make_two_eye_records(100)[:-1]
    recs = [r if i % 3 else Record(r.id_code, r.path, r.grade) for i, r in enumerate(recs)]  # some lack a group
    folds = assign_folds(np.array([r.grade for r in recs]), [r.group for r in recs], 5, 0)
    fold_of = {}
    for rec, fold in zip(recs, folds, strict=True):
        if rec.group:
            assert fold_of.setdefault(rec.group, fold) == fold


def test_fold_file_splitting_a_patient_is_refused():
    recs = make_two_eye_records(50)
    folds = assign_folds(np.array([r.grade for r in recs[:-1]]), [r.group for r in recs[:-1]], 5, 42)
    folds[0] = (folds[1] + 1) % 5  # p0's left eye moved away from the right one
    with pytest.raises(DataError, match=r"patient\(s\) \['p0'\] in more than one fold"):
        split_roles(recs, SplitConfig(), folds)


def test_label_counts_keys():
    recs = make_records()
    cfg = SplitConfig(label_fraction=0.25)
    table = split_roles(recs, cfg)
    counts = label_counts(table, cfg)
    assert counts == {"labels/train": (table.role == "train").sum(), "labels/val": (table.role == "val").sum(),
                      "labels/read": table.role.isin(["train", "val"]).sum(),
                      "labels/available": (table.role != "test").sum(), "val_protocol": "within_fraction"}
