"""ssl_dr.reporting.stats: the paired interval against hand arithmetic, what one job's files say (collapse, labels
read, budget), and how those facts land per arm x fraction in report.csv / report.md."""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats

from ssl_dr.reporting.stats import (
    corrected_resampled_t_interval,
    job_facts,
    kfold_test_train_ratio,
    naive_t_interval,
    partition_interval,
    predicted_grades,
    shares_partitions,
)
from ssl_dr.reporting.writer import write_report
from tests.test_report import edit_metrics, job_dir, make_sweep, write_job, write_predictions

# ---------------------------------------------------------------- the interval, by hand


def test_corrected_resampled_t_interval_by_hand():
    """diffs 0.1, 0.2, 0.0, 0.3, 0.15 over J = 5 folds of k = 5-fold cross-validation:
    mean = 0.75 / 5 = 0.15; squared deviations 0.0025 + 0.0025 + 0.0225 + 0.0225 + 0 = 0.05; s² = 0.05 / 4 = 0.0125;
    n_test/n_train = 1/(k-1) = 1/4; corrected se = sqrt((1/5 + 1/4) * 0.0125) = sqrt(0.005625) = 0.075;
    t(0.975, 4 df) = 2.776445 (table); half width 0.075 * 2.776445 = 0.208233375 -> [-0.058233375, 0.358233375].
    Naive: se = sqrt(0.0125 / 5) = 0.05, half width 0.13882225 -> [0.01117775, 0.28882225]."""
    diffs = [0.1, 0.2, 0.0, 0.3, 0.15]
    assert kfold_test_train_ratio(5) == 0.25
    mean, low, high = corrected_resampled_t_interval(diffs, kfold_test_train_ratio(5))
    assert mean == pytest.approx(0.15, abs=1e-12)
    assert (low, high) == (pytest.approx(-0.058233375, abs=1e-6), pytest.approx(0.358233375, abs=1e-6))
    mean, low, high = naive_t_interval(diffs)
    assert mean == pytest.approx(0.15, abs=1e-12)
    assert (low, high) == (pytest.approx(0.01117775, abs=1e-6), pytest.approx(0.28882225, abs=1e-6))


# 3 seeds x 5 folds of paired differences (arm minus baseline): each seed's five sum to 0.5
REPEATED_DIFFS = {42: [0.10, 0.05, 0.15, 0.00, 0.20],
                  43: [0.25, -0.05, 0.20, 0.00, 0.10],
                  44: [-0.05, 0.10, 0.25, 0.05, 0.15]}


def test_corrected_repeated_kfold_t_interval_by_hand():
    """Bouckaert & Frank's corrected repeated k-fold t over n = k x r = 5 x 3 = 15 differences (REPEATED_DIFFS).
    mean = (0.5 + 0.5 + 0.5) / 15 = 0.1; squared deviations from 0.1: seed 42: 0 + 0.0025 + 0.0025 + 0.01 + 0.01
    = 0.025; seed 43: 0.0225 + 0.0225 + 0.01 + 0.01 + 0 = 0.065; seed 44: 0.0225 + 0 + 0.0225 + 0.0025 + 0.0025
    = 0.05; sum 0.14; s^2 = 0.14 / 14 = 0.01, s = 0.1. n_test/n_train = 1/(k-1) = 1/4.
    se = sqrt(1/15 + 1/4) * 0.1 = sqrt(19/60) * 0.1 = 0.0562731; t(0.975, 14 df) = 2.144787;
    half width 0.1206939 -> [-0.0206939, +0.2206939] (contains 0). The wrong formulas give other numbers:
    naive (se = s/sqrt(15) = 0.0258199) -> [+0.0446218, +0.1553782] (excludes 0); one run's formula with k
    for n (se = sqrt(1/5 + 1/4) s = 0.0670820, t on 4 df = 2.776445) -> [-0.0862496, +0.2862496]; the 15
    differences taken as the folds of one 15-fold run (ratio 1/14) -> [+0.0202972, +0.1797028]; the r = 3
    repetitions taken as the folds (ratio 1/(3-1) = 1/2) -> [-0.0614537, +0.2614537]."""
    diffs = [d for seed in (42, 43, 44) for d in REPEATED_DIFFS[seed]]
    k, r = 5, 3
    n = k * r
    mean = (0.5 + 0.5 + 0.5) / 15
    s = math.sqrt((0.025 + 0.065 + 0.05) / (n - 1))
    assert s == pytest.approx(0.1, abs=1e-12)
    t14, t4 = stats.t.ppf(0.975, n - 1), stats.t.ppf(0.975, k - 1)
    assert (t14, t4) == (pytest.approx(2.144787, abs=1e-6), pytest.approx(2.776445, abs=1e-6))
    half = t14 * math.sqrt(1 / 15 + 1 / 4) * s
    expected = (mean - half, mean + half)
    assert expected == (pytest.approx(-0.0206939, abs=1e-7), pytest.approx(0.2206939, abs=1e-7))

    got_mean, low, high = corrected_resampled_t_interval(diffs, kfold_test_train_ratio(k))
    assert got_mean == pytest.approx(mean, abs=1e-12)
    assert (low, high) == (pytest.approx(expected[0], abs=1e-9), pytest.approx(expected[1], abs=1e-9))
    wrong = {"naive t": t14 * s / math.sqrt(n),
             "one run's formula, k for n": t4 * math.sqrt(1 / k + 1 / (k - 1)) * s,
             "one run's formula, k for n, 14 df": t14 * math.sqrt(1 / k + 1 / (k - 1)) * s,
             "15 differences as 15 folds": t14 * math.sqrt(1 / n + 1 / (n - 1)) * s,
             "r repetitions as the folds": t14 * math.sqrt(1 / n + 1 / (r - 1)) * s,
             "1/r for 1/n": t14 * math.sqrt(1 / r + 1 / (k - 1)) * s}
    for name, wrong_half in wrong.items():
        assert abs(wrong_half - half) > 0.01, name  # the example tells every one of them from the right one
        assert high - mean != pytest.approx(wrong_half, abs=1e-4), name
    naive = naive_t_interval(diffs)
    assert naive[1:] == (pytest.approx(0.0446218, abs=1e-7), pytest.approx(0.1553782, abs=1e-7))
    assert low < 0 < naive[1]  # only the naive interval would claim the arm is better


# REPEATED_DIFFS' seeds on ONE split seed, averaged over the seeds of each fold, in 1/60: fold 0 (0.10 + 0.25 -
# 0.05) / 3 = 6/60; fold 1 (0.05 - 0.05 + 0.10) / 3 = 2/60; fold 2 0.60 / 3 = 12/60; fold 3 0.05 / 3 = 1/60;
# fold 4 0.45 / 3 = 9/60
STRICT_HALF = 2.776445 * math.sqrt(0.45 * 86 / 14400)  # see test_partition_interval_by_hand


def _indexed(diffs: dict[int, list[float]], split_seed_of=lambda seed: 42) -> pd.Series:
    """Differences indexed like paired_differences' (split seed, fold, seed)."""
    index = [(split_seed_of(seed), fold, seed) for seed in diffs for fold in range(len(diffs[seed]))]
    return pd.Series([d for seed in diffs for d in diffs[seed]],
                     index=pd.MultiIndex.from_tuples(index, names=["split_seed", "fold", "seed"]))


def test_partition_interval_by_hand():
    """Seeds 42, 43, 44 on one split seed (REPEATED_DIFFS): the stricter reading averages each fold over the
    seeds: 6, 2, 12, 1, 9 (/60), mean 30/300 = 6/60 = 0.1; deviations 0, -4, 6, -5, 3 (/60), squares 0 + 16 + 36
    + 25 + 9 = 86 (/3600); s^2 = 86 / 3600 / 4 = 86/14400; Nadeau & Bengio over the k = 5 fold means (r = 1):
    se^2 = (1/5 + 1/4) * 86/14400 = 0.0026875, se = 0.0518411; t(0.975, 4 df) = 2.776445; half width 0.143934
    -> [-0.043934, +0.243934], wider than the 15-pair interval [-0.020694, +0.220694] that assumed three
    partitions. Re-partitioned (split seed = seed), no fold holds two seeds, and nothing is averaged."""
    shared = _indexed(REPEATED_DIFFS)
    assert shares_partitions(shared)
    assert STRICT_HALF == pytest.approx(0.143934, abs=1e-6)
    mean, low, high = partition_interval(shared, kfold_test_train_ratio(5))
    assert mean == pytest.approx(0.1, abs=1e-12)
    assert (low, high) == (pytest.approx(-0.043934, abs=1e-6), pytest.approx(0.243934, abs=1e-6))
    fold_means = [statistics.fmean(REPEATED_DIFFS[seed][fold] for seed in REPEATED_DIFFS) for fold in range(5)]
    assert (low, high) == pytest.approx(stats.t.interval(0.95, df=4, loc=statistics.fmean(fold_means),
                                                         scale=math.sqrt(1 / 5 + 1 / 4) * statistics.stdev(fold_means)))
    repeated = corrected_resampled_t_interval(shared, kfold_test_train_ratio(5))
    assert low < repeated[1] and repeated[2] < high
    # two partitions, each with two seeds: n = 2 partitions x 5 folds of seed means, r = 2
    two = _indexed(REPEATED_DIFFS | {45: [0.0, 0.1, 0.2, 0.1, 0.3]}, lambda seed: 1 if seed < 44 else 2)
    means = [statistics.fmean(two.xs((split, fold), level=["split_seed", "fold"])) for split in (1, 2)
             for fold in range(5)]
    half = stats.t.ppf(0.975, 9) * math.sqrt(1 / 10 + 1 / 4) * statistics.stdev(means)
    assert partition_interval(two, 0.25)[1:] == pytest.approx((statistics.fmean(means) - half,
                                                               statistics.fmean(means) + half))
    assert not shares_partitions(_indexed(REPEATED_DIFFS, split_seed_of=lambda seed: seed))


def test_corrected_interval_at_another_confidence_and_k():
    """90 %, k = 10: se = sqrt((1/5 + 1/9) * 0.0125) = 0.0623610; t(0.95, 4 df) = 2.131847 -> half 0.1329444."""
    mean, low, high = corrected_resampled_t_interval([0.1, 0.2, 0.0, 0.3, 0.15], kfold_test_train_ratio(10), 0.90)
    assert (low, high) == (pytest.approx(0.15 - 0.1329444, abs=1e-6), pytest.approx(0.15 + 0.1329444, abs=1e-6))


def test_one_difference_has_no_interval():
    """J = 1: no spread to estimate (and t on 0 degrees of freedom): mean only; J = 0: nothing."""
    mean, low, high = corrected_resampled_t_interval([0.12], 0.25)
    assert mean == 0.12 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in corrected_resampled_t_interval([], 0.25))
    assert math.isnan(naive_t_interval([0.12])[1])


def test_zero_variance_gives_a_point_interval():
    """Identical differences: s = 0, so both intervals collapse to the mean (no division by zero, no NaN)."""
    assert corrected_resampled_t_interval([0.05] * 4, 0.25) == pytest.approx((0.05, 0.05, 0.05))
    assert naive_t_interval([0.05] * 4) == pytest.approx((0.05, 0.05, 0.05))


def test_unknown_k_claims_no_corrected_interval():
    assert kfold_test_train_ratio(None) is None
    mean, low, high = corrected_resampled_t_interval([0.1, 0.2, 0.3], None)
    assert mean == pytest.approx(0.2) and math.isnan(low) and math.isnan(high)


@pytest.mark.parametrize("call", [lambda: kfold_test_train_ratio(1),
                                  lambda: corrected_resampled_t_interval([0.1, 0.2], -0.1),
                                  lambda: corrected_resampled_t_interval([0.1, 0.2], 0.25, confidence=1.0)])
def test_impossible_arguments_are_refused(call):
    with pytest.raises(ValueError):
        call()


# ---------------------------------------------------------------- one job's facts


def test_predicted_grades_from_predictions_file_first(tmp_path):
    write_predictions(tmp_path, [3, 3, 3])
    path = tmp_path / "test_predictions.csv"
    assert predicted_grades(path, {"test/grades_predicted": 4}) == (1, 3)  # the file wins over the metrics key
    write_predictions(tmp_path, [0, 2, 2, 4])
    count, grade = predicted_grades(path, {})
    assert count == 3 and math.isnan(grade)


@pytest.mark.parametrize(("metrics", "expected"), [({"test/grades_predicted": 1}, (1, math.nan)),
                                                   ({"test/grades_predicted": [2, 2]}, (1, 2)),
                                                   ({"test/grades_predicted": [0, 4]}, (2, math.nan)),
                                                   ({}, (math.nan, math.nan))])
def test_predicted_grades_without_predictions_file(tmp_path, metrics, expected):
    assert predicted_grades(tmp_path / "test_predictions.csv", metrics) == pytest.approx(expected, nan_ok=True)


@pytest.mark.parametrize("text", ["id_code,grade,score\nimg0,1,0.7\n", "id_code,grade,pred\n", "\x00garbage",
                                  "id_code,grade,pred\nimg0,1,mild\n"])
def test_unreadable_or_empty_predictions_are_unknown(tmp_path, text):
    (tmp_path / "test_predictions.csv").write_text(text)
    count, grade = predicted_grades(tmp_path / "test_predictions.csv", {"test/grades_predicted": 1})
    assert math.isnan(count) and math.isnan(grade)


def test_job_facts_prefer_new_keys_and_fall_back_to_num_train(tmp_path):
    new = job_facts({"labels/train": 8, "labels/val": 2, "labels/read": 10, "num_train": 99, "num_val": 99,
                     "train/steps": 150, "best/step": None, "val_protocol": "fixed"}, tmp_path / "none.csv")
    assert (new["labels_train"], new["labels_val"], new["labels_read"], new["train_steps"]) == (8, 2, 10, 150)
    assert math.isnan(new["best_step"]) and math.isnan(new["train_epochs"]) and new["val_protocol"] == "fixed"
    old = job_facts({"num_train": 40, "num_val": 5}, tmp_path / "none.csv")
    assert (old["labels_train"], old["labels_val"], old["labels_read"]) == (40, 5, 45)
    assert old["val_protocol"] is None and math.isnan(old["labels_available"])
    crashed = job_facts(None, tmp_path / "none.csv")
    assert all(v is None or math.isnan(v) for v in crashed.values())


# ---------------------------------------------------------------- per arm x fraction, through the report

def test_collapsed_run_is_counted_and_listed(tmp_path):
    """A run that predicts one grade for its whole test fold (test_predictions.csv) is counted per cell, in
    report.csv and report.md, and named above the table."""
    sweep = make_sweep(tmp_path, preds=[0, 1, 2, 3, 4, 2])
    job = job_dir(sweep, "baseline", 0.05, 1)
    write_predictions(job, [0] * 6)
    files = write_report(sweep)
    table = pd.read_csv(sweep / "report.csv").set_index(["arm", "label_fraction"])
    assert (table.loc[("baseline", 0.05), "collapsed"], table.loc[("baseline", 0.05), "collapse_checked"]) == (1, 3)
    assert (table.drop(index=[("baseline", 0.05)]).collapsed == 0).all() and (table.collapse_checked == 3).all()
    assert pd.read_csv(sweep / "report.csv", dtype=str).collapsed.tolist() == ["1", "0", "0", "0"]  # counts, not 1.0
    markdown = files.markdown.read_text()
    line = (f"- job {job.name}: arm=baseline fraction=0.05 fold=1 seed=42 split_seed=42 predicts grade 0 for every "
            "test image (test QWK 0.300)")
    assert markdown.index("## Collapsed: 1 finished job(s)") < markdown.index(line) < markdown.index("## Test QWK")
    assert "| baseline | 5% | 3/3 | 0.257 (0.220 – 0.300) | 0.257 ± 0.040 | 0.040" \
           " | n/a (1 seed) | n/a | 1/3 |" in markdown
    assert "| rotation | 5% | 3/3 | 0.313 (0.280 – 0.350) | 0.313 ± 0.035 | 0.035" \
           " | n/a (1 seed) | n/a | 0/3 |" in markdown


def test_collapse_from_metrics_when_predictions_are_missing_else_unknown(tmp_path):
    """No test_predictions.csv: metrics.json's test/grades_predicted tells; without either the run is unknown,
    never counted as not collapsed."""
    sweep = make_sweep(tmp_path)
    edit_metrics(job_dir(sweep, "baseline", 0.05, 0), test__grades_predicted=1)
    edit_metrics(job_dir(sweep, "baseline", 0.05, 1), test__grades_predicted=4)
    files = write_report(sweep)
    table = files.table.set_index(["arm", "label_fraction"])
    assert (table.loc[("baseline", 0.05), "collapsed"], table.loc[("baseline", 0.05), "collapse_checked"]) == (1, 2)
    unchecked = table.loc[("rotation", 0.1)]
    assert unchecked.collapse_checked == 0 and pd.isna(unchecked.collapsed)
    markdown = files.markdown.read_text()
    assert "| 0.257 ± 0.040 | 0.040 | n/a (1 seed) | n/a | 1/2 (1 unknown) |" in markdown
    assert "| 0.443 ± 0.031 | 0.031 | n/a (1 seed) | n/a | unknown |" in markdown
    assert "fraction=0.05 fold=0 seed=42 split_seed=42 predicts one grade for every test image" in markdown


NEW_KEYS = {"num_train": None, "labels/train": 10, "labels/val": 2, "labels/read": 12, "labels/available": 240,
            "val_protocol": "within_fraction", "train/steps": 150, "train/epochs": 15.0, "best/step": 120}


def test_labels_read_and_training_budget_per_cell(tmp_path):
    sweep = make_sweep(tmp_path, metrics=NEW_KEYS)
    edit_metrics(job_dir(sweep, "rotation", 0.05, 2), labels__train=13, labels__read=15, best__step=math.nan)
    files = write_report(sweep)
    row = pd.read_csv(sweep / "report.csv").set_index(["arm", "label_fraction"]).loc[("rotation", 0.05)]
    assert (row.labels_train, row.labels_val, row.labels_read, row.labels_available) == (11, 2, 13, 240)
    assert (row.train_steps, row.train_epochs, row.best_step) == (150, 15, 120)  # NaN best step: mean of the others
    assert row.val_protocol == "within_fraction"
    markdown = files.markdown.read_text()
    assert "## Labels read and training budget (mean over the finished runs)" in markdown
    assert "| rotation | 5% | 11 | 2 | 13 (5.4% of 240) | within_fraction | 150 | 120 | 15 |" in markdown
    assert "| baseline | 10% | 10 | 2 | 12 (5.0% of 240) | within_fraction | 150 | 120 | 15 |" in markdown
    assert "Optimistic" not in markdown


def test_old_runs_fall_back_to_num_train_and_leave_the_budget_blank(tmp_path):
    sweep = make_sweep(tmp_path, metrics={"num_val": 3})
    files = write_report(sweep)
    assert (files.table.labels_read == 13).all()
    assert files.table[["labels_available", "train_steps", "train_epochs", "best_step"]].isna().all().all()
    assert files.table.val_protocol.isna().all()
    assert "| rotation | 10% | 10 | 3 | 13 |  |  |  |  |" in files.markdown.read_text()


def test_fixed_validation_protocol_is_flagged_at_the_top(tmp_path):
    """val_protocol=fixed draws validation labels outside the fraction: the report says so before anything else."""
    sweep = make_sweep(tmp_path, metrics=NEW_KEYS)
    for fold in range(3):
        edit_metrics(job_dir(sweep, "rotation", 0.05, fold), val_protocol="fixed", labels__val=30, labels__read=40)
    shutil.rmtree(job_dir(sweep, "baseline", 0.1, 0))
    files = write_report(sweep)
    markdown = files.markdown.read_text()
    warning = "**Optimistic results: 3 job(s) ran with val_protocol=fixed** (arms: rotation)"
    assert markdown.index(warning) < markdown.index("## Incomplete") < markdown.index("## Test QWK")
    assert "validation labels were drawn outside the label fraction" in markdown
    assert "| rotation | 5% | 10 | 30 | 40 (16.7% of 240) | fixed |" in markdown
    assert files.table.set_index(["arm", "label_fraction"]).loc[("rotation", 0.05), "val_protocol"] == "fixed"




# ---------------------------------------------------------------- seeds as a sweep axis, through the report


def baseline_qwk(fold: int, seed: int) -> float:
    """Baseline test QWK that moves with fold and seed, so a pair across seeds would show a different difference."""
    return 0.30 + 0.01 * fold + 0.05 * (seed - 42)


def make_seed_sweep(root: Path) -> Path:
    """experiment=paper seed=42,43,44 at one fraction: seed first in the sweeper params (slowest), arm last;
    rotation = baseline + REPEATED_DIFFS[seed][fold]."""
    sweep = root / "multiruns" / "2026-01-02_00-00-00_000000"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(
        "hydra:\n  sweeper:\n    params:\n      seed: 42,43,44\n      data.label_fraction: '0.1'\n"
        "      data.fold: 0,1,2,3,4\n      arm: rotation,baseline\n  overrides:\n    task: [experiment=paper]\n")
    jobs = [(seed, fold, arm) for seed in (42, 43, 44) for fold in range(5) for arm in ("rotation", "baseline")]
    for num, (seed, fold, arm) in enumerate(jobs):
        qwk = baseline_qwk(fold, seed) + (REPEATED_DIFFS[seed][fold] if arm == "rotation" else 0.0)
        write_job(sweep, num, arm, 0.1, fold, qwk, chooser="arm", seed=seed)
    return sweep


def test_seed_sweep_pairs_by_split_seed_fold_and_seed_with_the_repeated_interval(tmp_path):
    """15 pairs (5 folds x 3 seeds), the interval over all 15 with k = 5 (not over per-fold or per-seed means,
    not with k = 15 or k = 3): the numbers of test_corrected_repeated_kfold_t_interval_by_hand."""
    files = write_report(make_seed_sweep(tmp_path))
    assert files.complete
    paired = pd.read_csv(files.paired_csv)
    assert len(paired) == 1
    row = paired.iloc[0]
    assert (row.pairs, row.folds, row.num_folds, row.repetitions, row.seeds, row.split_seeds) == (
        15, "0,1,2,3,4", 5, 3, "42,43,44", 42)
    half = stats.t.ppf(0.975, 14) * math.sqrt(1 / 15 + 1 / 4) * 0.1
    assert row.diff_mean == pytest.approx(0.1, abs=1e-9)
    assert (row.ci_low, row.ci_high) == (pytest.approx(0.1 - half, abs=1e-9), pytest.approx(0.1 + half, abs=1e-9))
    naive_half = stats.t.ppf(0.975, 14) * 0.1 / math.sqrt(15)
    assert (row.naive_ci_low, row.naive_ci_high) == (pytest.approx(0.1 - naive_half, abs=1e-9),
                                                     pytest.approx(0.1 + naive_half, abs=1e-9))
    # three seeds on split seed 42: the assumption of new partitions is not met; the stricter interval beside it
    assert (row.partitions, row.shared_partition) == (1, True)
    assert (row.strict_ci_low, row.strict_ci_high) == (pytest.approx(0.1 - STRICT_HALF, abs=1e-6),
                                                       pytest.approx(0.1 + STRICT_HALF, abs=1e-6))
    markdown = files.markdown.read_text()
    assert (f"| rotation | 10% | 15 | 0,1,2,3,4 | 3 (seed 42,43,44; split seed 42) | +0.100 | [{0.1 - half:+.3f}, "
            f"{0.1 + half:+.3f}] | [-0.044, +0.244] | [{0.1 - naive_half:+.3f}, {0.1 + naive_half:+.3f}] |") in markdown
    assert "| 95% CI (corrected) | 95% CI, seeds averaged per fold (stricter) | 95% CI naive" in markdown
    assert "corrected repeated k-fold t (Bouckaert & Frank, 2004)" in markdown
    assert "sqrt(1/n + n_test/n_train) * s" in markdown and "t on n - 1 degrees of freedom" in markdown
    warning = ("**Assumption (1) is not met in 1 row(s): their repetitions share a partition** (split seed 42 under "
               "several seeds)")
    assert markdown.index("It assumes (1) that every repetition is a new random partition") < markdown.index(
        warning) < markdown.index("| rotation | 10% | 15 |")
    assert "Nadeau & Bengio's corrected k-fold t over the k fold means, r = 1" in markdown


def make_repartitioned_sweep(root: Path) -> Path:
    """experiment=paper seed=42,43,44 as paper.yaml now sweeps it: each job's config says data.split_seed:
    ${seed} (saved unresolved, as Hydra does), so seed s tests on partition s; the same QWKs as make_seed_sweep."""
    sweep = make_seed_sweep(root)
    for path in sweep.glob("*/.hydra/config.yaml"):
        cfg = OmegaConf.load(path)
        cfg.data.split_seed = "${seed}"
        OmegaConf.save(cfg, path)
    for path in sweep.glob("*/metrics.json"):
        metrics = json.loads(path.read_text())
        path.write_text(json.dumps({**metrics, "split_seed": metrics["seed"]}))
    return sweep


def test_repartitioned_seed_sweep_meets_the_assumption_and_expects_one_partition_per_seed(tmp_path):
    """Seeds that re-partition: 3 repetitions (not 3 seeds x 3 split seeds = 9, 30 of them missing), the same
    15-pair corrected interval, and neither the warning nor the stricter column."""
    files = write_report(make_repartitioned_sweep(tmp_path))
    assert files.complete
    row = pd.read_csv(files.paired_csv).iloc[0]
    assert (row.pairs, row.repetitions, row.seeds, row.split_seeds, row.partitions) == (15, 3, "42,43,44",
                                                                                         "42,43,44", 3)
    half = stats.t.ppf(0.975, 14) * math.sqrt(1 / 15 + 1 / 4) * 0.1
    assert (row.ci_low, row.ci_high) == (pytest.approx(0.1 - half, abs=1e-9), pytest.approx(0.1 + half, abs=1e-9))
    assert not row.shared_partition and math.isnan(row.strict_ci_low) and math.isnan(row.strict_ci_high)
    markdown = files.markdown.read_text()
    assert "2 arms x 1 fractions x 5 folds x 3 repetition(s) (seed/split seed: 42/42, 43/43, 44/44) = 30" in markdown
    assert "is not met" not in markdown and "(stricter)" not in markdown
    assert "It assumes (1) that every repetition is a new random partition" in markdown
    assert "| 3 (seed 42,43,44; split seed 42,43,44) | +0.100 |" in markdown
    assert (pd.read_csv(files.csv).runs_expected == 15).all()


def test_repartitioned_sweep_missing_a_seed_expects_its_own_partition_only(tmp_path):
    """Seed 44 never ran: its 10 jobs (2 arms x 5 folds, split seed 44) are missing, not seed 44 on split seeds
    42 and 43 as well; the tie is read from the other jobs' configs."""
    sweep = make_repartitioned_sweep(tmp_path)
    for path in sweep.glob("*/metrics.json"):
        if json.loads(path.read_text())["seed"] == 44:
            shutil.rmtree(path.parent)
    files = write_report(sweep)
    assert len(files.gaps) == 10
    assert {(gap.kind, gap.seed, gap.split_seed) for gap in files.gaps} == {("MISSING", 44, 44)}


def test_seed_sweep_table_spread_over_folds_and_over_seeds(tmp_path):
    """Per arm x fraction over all 15 runs: MIN / AVG / MAX / SD; SD over folds = mean over the seeds of the SD
    across that seed's 5 folds; SD over seeds = SD across the seeds of each seed's mean over its folds."""
    files = write_report(make_seed_sweep(tmp_path))
    table = pd.read_csv(files.csv).set_index("arm")
    for arm in ("baseline", "rotation"):
        runs = {seed: [baseline_qwk(fold, seed) + (REPEATED_DIFFS[seed][fold] if arm == "rotation" else 0.0)
                       for fold in range(5)] for seed in (42, 43, 44)}
        every = [q for qwks in runs.values() for q in qwks]
        row = table.loc[arm]
        assert (row.runs_present, row.runs_expected, row.repetitions) == (15, 15, 3)
        assert (row.qwk_min, row.qwk_avg, row.qwk_max) == pytest.approx((min(every), sum(every) / 15, max(every)))
        assert row.qwk_std == pytest.approx(statistics.stdev(every))
        assert row.qwk_sd_folds == pytest.approx(statistics.fmean(statistics.stdev(q) for q in runs.values()))
        assert row.qwk_sd_seeds == pytest.approx(statistics.stdev(statistics.fmean(q) for q in runs.values()))
    # baseline: each seed's folds are 0.30..0.34 (+0.05 per seed): SD over folds 0.01 * sqrt(2.5), seeds 0.05
    assert table.loc["baseline", "qwk_sd_folds"] == pytest.approx(0.01 * math.sqrt(2.5))
    assert table.loc["baseline", "qwk_sd_seeds"] == pytest.approx(0.05)
    markdown = files.markdown.read_text()
    std = statistics.stdev(baseline_qwk(fold, seed) for seed in (42, 43, 44) for fold in range(5))
    row = f"| baseline | 10% | 15/15 | 0.370 (0.300 – 0.440) | 0.370 ± {std:.3f} | 0.016 | 0.050 | n/a | unknown |"
    assert row in markdown
    assert "SD over seeds: the sample SD, across the repetitions, of each repetition's mean over its folds" in markdown
    assert "2 arms x 1 fractions x 5 folds x 3 seed(s) (42, 43, 44) x 1 split seed(s) (42) = 30" in markdown


def test_spread_over_seeds_uses_only_the_folds_every_seed_has(tmp_path):
    """A sweep stopped midway: seed 44 has finished fold 0 only. Its 'mean' must not be that one fold's QWK
    against the others' 5-fold means: the spread over seeds is taken over fold 0, the fold all seeds share."""
    sweep = make_seed_sweep(tmp_path)
    for job in sweep.glob("*/metrics.json"):
        metrics = json.loads(job.read_text())
        if metrics["seed"] == 44 and metrics["fold"] != 0:
            job.unlink()
    table = pd.read_csv(write_report(sweep).csv).set_index("arm")
    fold0 = [baseline_qwk(0, seed) for seed in (42, 43, 44)]
    assert table.loc["baseline", "qwk_sd_seeds"] == pytest.approx(statistics.stdev(fold0))
    assert table.loc["baseline", "repetitions"] == 3
