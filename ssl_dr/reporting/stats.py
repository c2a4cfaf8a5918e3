"""The numbers behind ``ssl_dr.report`` and the markdown tables they are printed in: what a finished job says
beyond its test QWK (did it collapse to one grade, how many labels it read, how long it trained), their per
arm x fraction aggregates (over folds and seeds), and the paired arm-minus-baseline intervals.

Apart from the report module, which finds a sweep's jobs and writes the files: here are the numbers, functions of
a job's metrics (and its ``test_predictions.csv``) or of the job table, each checked against a hand computation
(``tests/test_report.py``, ``tests/reporting/test_report_stats.py``). The headline interval is the corrected
repeated k-fold t (Bouckaert & Frank 2004, Nadeau & Bengio's correction), with ``partition_interval`` where seeds
share a partition; derivation, assumptions and numbers: docs/protocol.md, "Seeds and the paired interval".
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from itertools import product
from pathlib import Path
from typing import Any

import pandas as pd

from ssl_dr.reporting.identity import describe

CONFIDENCE = 0.95
FIXED_VAL = "fixed"  # val_protocol of a run whose validation labels were drawn outside its label fraction
BASELINE = "baseline"
# one repetition of the k-fold cross-validation; an arm's run and the baseline's that saw the same split
REPETITION = ["split_seed", "seed"]
PAIR_KEYS = ["split_seed", "fold", "seed"]
PARTITION = ["split_seed", "fold"]  # one test fold of one k-fold partition
# runs_*: jobs (fold x seed x split seed); repetitions: distinct (split seed, seed); qwk_std over all runs;
# qwk_sd_folds / qwk_sd_seeds: the spread over folds and over seeds (defined in ``_spreads``)
TABLE_COLUMNS = ["arm", "label_fraction", "runs_present", "runs_expected", "repetitions", "qwk_min", "qwk_avg",
                 "qwk_max", "qwk_std", "qwk_sd_folds", "qwk_sd_seeds", "auroc_referable", "auroc_runs", "collapsed",
                 "collapse_checked",
                 "labels_train", "labels_val", "labels_read", "labels_available", "val_protocol", "train_steps",
                 "train_epochs", "best_step"]
# ci_*: the corrected repeated k-fold t interval (the headline); naive_ci_*: pairs treated as independent;
# shared_partition: a test fold holds several seeds' pairs, and then strict_ci_*: ``partition_interval`` (else NaN)
PAIRED_COLUMNS = ["arm", "baseline", "label_fraction", "pairs", "folds", "num_folds", "repetitions", "seeds",
                  "split_seeds", "diff_mean", "ci_low", "ci_high", "naive_ci_low", "naive_ci_high", "partitions",
                  "shared_partition", "strict_ci_low", "strict_ci_high"]
# per-job fact -> metrics.json keys it is read from, first found wins (num_*: runs older than labels/*); the
# table holds their mean over a cell's runs. auroc_referable: the screening metric beside QWK (NaN where a test
# fold holds one side of grade >= 2 only, or in runs older than it; auroc_runs counts the runs it averages)
MEAN_KEYS = {"auroc_referable": ("test/auroc_referable",),
             "labels_train": ("labels/train", "num_train"), "labels_val": ("labels/val", "num_val"),
             "labels_read": ("labels/read",), "labels_available": ("labels/available",),
             "train_steps": ("train/steps",), "train_epochs": ("train/epochs",), "best_step": ("best/step",)}


# ---------------------------------------------------------------- the paired interval


def kfold_test_train_ratio(num_folds: int | None) -> float | None:
    """n_test / n_train of k-fold cross-validation: one fold tested, the other k-1 trained on. None when the
    sweep's k is unknown (job folders without a Hydra config): then no corrected interval is claimed."""
    if num_folds is None:
        return None
    if num_folds < 2:
        raise ValueError(f"k-fold cross-validation needs k >= 2 folds, got {num_folds}")
    return 1 / (num_folds - 1)


def corrected_resampled_t_interval(diffs: Iterable[float], test_train_ratio: float | None,
                                   confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences by the corrected resampled t of Nadeau & Bengio: standard error
    sqrt(1/n + test_train_ratio) * s, s their sample standard deviation, t quantile on n-1 degrees of freedom,
    n = len(diffs). Given all k x r differences of r repeated k-fold cross-validations (never per-repetition
    means) and ``kfold_test_train_ratio(k)``, this is Bouckaert & Frank's corrected repeated k-fold t; with
    r = 1 it is the corrected interval over one run's k folds. ``test_train_ratio=0`` is the plain t interval
    that treats the differences as independent. Fewer than 2 differences (no spread to estimate) or an
    unknown ratio (None) give NaN bounds."""
    from scipy import stats  # imported here: the report refuses bad input without the slow imports

    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if test_train_ratio is not None and test_train_ratio < 0:
        raise ValueError(f"n_test/n_train must be >= 0, got {test_train_ratio}")
    values = [float(d) for d in diffs]
    mean = statistics.fmean(values) if values else math.nan
    if len(values) < 2 or test_train_ratio is None:
        return mean, math.nan, math.nan
    half = stats.t.ppf((1 + confidence) / 2, len(values) - 1) * math.sqrt(1 / len(values) + test_train_ratio) \
        * statistics.stdev(values)
    return mean, mean - half, mean + half


def naive_t_interval(diffs: Iterable[float], confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The plain t interval over the differences (treated as independent): too narrow for cross-validation,
    shown only beside the corrected one."""
    return corrected_resampled_t_interval(diffs, 0.0, confidence)


def shares_partitions(diffs: pd.Series) -> bool:
    """Whether some test fold of some partition (split seed, fold) holds the differences of several seeds:
    then the repetitions are not the new random partitions the repeated k-fold t assumes."""
    return bool(diffs.groupby(level=PARTITION).size().gt(1).any())


def partition_interval(diffs: pd.Series, test_train_ratio: float | None,
                       confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """The stricter reading of differences indexed by PAIR_KEYS whose seeds share partitions: their mean over
    the seeds of each (split seed, fold), then the corrected t over those means (n = folds x partitions; with one
    partition Nadeau & Bengio's corrected k-fold t over the k fold means, r = 1)."""
    return corrected_resampled_t_interval(diffs.groupby(level=PARTITION).mean(), test_train_ratio, confidence)


# ---------------------------------------------------------------- what one job says


def _number(value: object) -> float:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # absent (None) or not a number: blank in the report, never a failure
        return math.nan


def predicted_grades(predictions: Path, metrics: dict) -> tuple[float, float]:
    """(number of distinct grades the job predicted on its test fold, the grade if it predicted only one).

    A run that predicts one grade for every image has learnt nothing but the majority class, whatever its QWK
    (0 or NaN) says. Read from ``test_predictions.csv``'s ``pred`` column, else from ``test/grades_predicted``
    in metrics.json (the count, or the list of grades); NaN where they do not tell (unknown)."""
    reported = metrics.get("test/grades_predicted")
    try:
        if predictions.is_file():
            grades = {int(p) for p in pd.read_csv(predictions, usecols=["pred"]).pred.dropna()}
        elif isinstance(reported, list):
            grades = {int(p) for p in reported}
        else:
            return _number(reported), math.nan
    except (ValueError, TypeError, OSError):  # no pred column, not grades, unreadable: cannot tell
        return math.nan, math.nan
    return (len(grades) or math.nan), (grades.pop() if len(grades) == 1 else math.nan)


def job_facts(metrics: dict | None, predictions: Path) -> dict:
    """A job's facts beyond test QWK (NaN / None where its files do not say): distinct grades predicted, the
    grade it collapsed to, labels read (train + val, the older ``num_train`` / ``num_val`` as fallback), its
    validation protocol and training budget."""
    metrics = metrics or {}
    facts = {name: next((_number(metrics[k]) for k in keys if k in metrics), math.nan)
             for name, keys in MEAN_KEYS.items()}
    if math.isnan(facts["labels_read"]):
        facts["labels_read"] = facts["labels_train"] + facts["labels_val"]  # NaN when either is unknown
    protocol = metrics.get("val_protocol")
    facts["val_protocol"] = str(protocol) if protocol is not None else None
    facts["grades_predicted"], facts["collapsed_to"] = (predicted_grades(predictions, metrics) if metrics
                                                        else (math.nan, math.nan))
    return facts


# ---------------------------------------------------------------- per arm x fraction


def _spreads(finished: pd.DataFrame) -> pd.DataFrame:
    """Per arm x fraction: the repetitions present (distinct split seed x seed); ``qwk_sd_folds``, the spread
    over folds: the sample SD across the folds of one repetition, averaged over the repetitions;
    ``qwk_sd_seeds``, the spread over seeds: the sample SD, across the repetitions, of each repetition's mean
    over its folds (how far the cross-validated estimate itself moves with the seed; NaN with one)."""
    per_repetition = finished.groupby(["arm", "label_fraction", *REPETITION]).test_qwk.agg(["mean", "std"])
    cells = per_repetition.groupby(level=["arm", "label_fraction"])
    seeds = cells["mean"].std().rename("qwk_sd_seeds")  # the cells' index, values replaced below
    for cell, jobs in finished.groupby(["arm", "label_fraction"]):
        seeds[cell] = _seed_spread(jobs)
    return pd.concat([cells.size().rename("repetitions"), cells["std"].mean().rename("qwk_sd_folds"), seeds], axis=1)


def _seed_spread(cell: pd.DataFrame) -> float:
    """SD across the repetitions of their means over the folds that EVERY repetition of the cell has: in a
    sweep stopped midway a repetition with one fold done would otherwise enter with that one fold's QWK as its
    "mean" and the spread would measure the folds, not the seeds."""
    grid = cell.pivot_table(index=REPETITION, columns="fold", values="test_qwk").dropna(axis=1)
    return float(grid.mean(axis=1).std()) if grid.shape[1] else math.nan


def summarise(finished: pd.DataFrame, arms: list[str], fractions: list[float], runs_expected: int) -> pd.DataFrame:
    """One row per arm x fraction (all of ``arms`` x ``fractions``, finished or not) over its ``finished`` jobs:
    runs present (fold x seed x split seed), MIN / AVG / MAX / sample std of test QWK over all of them, the
    spreads over folds and over seeds (``_spreads``), how many runs collapsed to one grade out of how many could
    be checked, the mean labels read and training budget (NaN when no job reported them), the protocols."""
    index = pd.MultiIndex.from_product([arms, fractions], names=["arm", "label_fraction"])
    keys = [finished.arm, finished.label_fraction]
    groups = finished.groupby(keys)
    table = pd.concat([groups.size().rename("runs_present"),
                       groups.test_qwk.agg(qwk_min="min", qwk_avg="mean", qwk_max="max", qwk_std="std"),
                       _spreads(finished),
                       finished.auroc_referable.notna().groupby(keys).sum().rename("auroc_runs"),
                       (finished.grades_predicted == 1).groupby(keys).sum().rename("collapsed"),
                       finished.grades_predicted.notna().groupby(keys).sum().rename("collapse_checked"),
                       groups[list(MEAN_KEYS)].mean(),
                       groups.val_protocol.agg(lambda p: ",".join(sorted(set(p.dropna()))) or None)], axis=1)
    table = table.reindex(index).reset_index()
    for column in ("runs_present", "repetitions", "collapse_checked", "auroc_runs"):
        table[column] = table[column].fillna(0).astype(int)
    table["collapsed"] = table.collapsed.where(table.collapse_checked > 0).astype("Int64")  # unknown, not 0
    table["runs_expected"] = runs_expected
    return table[TABLE_COLUMNS]


def paired_differences(finished: pd.DataFrame, arms: list[str], fractions: list[float], num_folds: int | None,
                       baseline: str = BASELINE) -> pd.DataFrame:
    """Per non-baseline arm and fraction: arm minus ``baseline`` test QWK over the runs both finished, paired by
    split seed, fold and seed (repetition and fold: the same test fold, the same randomness); the folds,
    repetitions, seeds and split seeds the pairs cover; the mean difference, the corrected repeated k-fold t
    interval over all pairs (``ci_*``, the headline; needs the sweep's k, ``num_folds``), the naive one
    (``naive_ci_*``), the partitions (split seeds) and, where seeds share them, ``partition_interval``
    (``strict_ci_*``). Empty when ``baseline`` is not among ``arms``."""
    ratio = kfold_test_train_ratio(num_folds)
    done = finished.set_index(PAIR_KEYS)
    rows = []
    for arm, fraction in product([a for a in arms if a != baseline] if baseline in arms else [], fractions):
        qwk = [done[(done.arm == name) & (done.label_fraction == fraction)].test_qwk for name in (arm, baseline)]
        diffs = (qwk[0] - qwk[1]).dropna()
        pairs = diffs.index.to_frame(index=False)
        shared = shares_partitions(diffs)
        rows.append([arm, baseline, fraction, len(diffs), _joined(pairs.fold), num_folds,
                     len(pairs[REPETITION].drop_duplicates()), _joined(pairs.seed), _joined(pairs.split_seed),
                     *corrected_resampled_t_interval(diffs, ratio), *naive_t_interval(diffs)[1:],
                     pairs.split_seed.nunique(), shared,
                     *(partition_interval(diffs, ratio)[1:] if shared else (math.nan, math.nan))])
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _joined(values: pd.Series) -> str:
    """``0,1,2``: the distinct values, sorted (a CSV cell that says which folds or seeds were paired)."""
    return ",".join(map(str, sorted({int(v) for v in values})))


# ---------------------------------------------------------------- as markdown


def pct(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _count(value: float) -> str:
    """Blank for NaN (a key older runs' metrics.json lacks), whole means without decimals."""
    return "" if math.isnan(value) else f"{value:.0f}" if float(value).is_integer() else f"{value:.1f}"


def _collapsed_cell(row: object) -> str:
    unknown = row.runs_present - row.collapse_checked  # finished runs whose predictions could not be read
    if not row.collapse_checked:
        return "unknown" if row.runs_present else "-"
    return f"{row.collapsed:.0f}/{row.collapse_checked}" + (f" ({unknown} unknown)" if unknown else "")


def _sd(value: float, why_none: str) -> str:
    return why_none if math.isnan(value) else f"{value:.3f}"


def qwk_md(table: pd.DataFrame, extra: Sequence[tuple[str, Callable[[Any], str]]] = ()) -> list[str]:
    """The paper's table (AVG (MIN – MAX) test QWK over all runs) with mean ± SD, the spreads over folds and over
    seeds, and the collapsed runs per arm x fraction; ``extra``: more columns (header, cell of a table row)."""
    rows = []
    for r in table.itertuples():
        runs = f"{r.runs_present}/{r.runs_expected}" + (" **incomplete**" * (r.runs_present < r.runs_expected))
        if r.runs_present == 0:
            rows.append([r.arm, pct(r.label_fraction), runs, "no finished run", *["-"] * (5 + len(extra))])
            continue
        rows.append([r.arm, pct(r.label_fraction), runs, f"{r.qwk_avg:.3f} ({r.qwk_min:.3f} – {r.qwk_max:.3f})",
                     f"{r.qwk_avg:.3f} ± {_sd(r.qwk_std, 'n/a (1 run)')}", _sd(r.qwk_sd_folds, "n/a (1 fold)"),
                     _sd(r.qwk_sd_seeds, "n/a (1 seed)"), _auroc_cell(r), _collapsed_cell(r),
                     *(cell(r) for _, cell in extra)])
    return ["## Test QWK over all runs (folds x seeds): AVG (MIN – MAX), as the paper prints it", "",
            "runs: finished / expected, one per fold x seed x split seed; a repetition is one seed and split seed "
            "(one whole k-fold cross-validation). mean ± SD: over all runs. SD over folds: the sample SD across "
            "the folds of one repetition, averaged over the repetitions. SD over seeds: the sample SD, across the "
            "repetitions, of each repetition's mean over its folds (how far the cross-validated estimate moves "
            "with the seed; in an incomplete sweep over the folds that every repetition has). referable AUROC: the "
            "screening view (grade >= 2), mean test AUROC over the runs whose test fold holds both sides (their "
            "count in brackets). collapsed: finished "
            "runs that predict a single grade / runs whose test predictions "
            "were read.", "",
            *md_table(["arm", "labels", "runs", "AVG (MIN – MAX)", "mean ± SD", "SD over folds", "SD over seeds",
                        "referable AUROC", "collapsed", *(name for name, _ in extra)], rows)]


def _auroc_cell(row: object) -> str:
    if not row.auroc_runs:
        return "n/a"  # older runs, or every test fold one-sided
    return f"{row.auroc_referable:.3f} ({row.auroc_runs}/{row.runs_present})"


def budget_md(table: pd.DataFrame) -> list[str]:
    """Mean labels read (train + val, share of the available) and training budget per arm x fraction."""
    rows = []
    for r in table.itertuples():
        read = _count(r.labels_read)
        if read and not math.isnan(r.labels_available) and r.labels_available > 0:
            read += f" ({r.labels_read / r.labels_available:.1%} of {_count(r.labels_available)})"
        protocol = r.val_protocol if isinstance(r.val_protocol, str) else ""  # NaN: no finished job
        rows.append([r.arm, pct(r.label_fraction), _count(r.labels_train), _count(r.labels_val), read, protocol,
                     _count(r.train_steps), _count(r.best_step), _count(r.train_epochs)])
    return ["## Labels read and training budget (mean over the finished runs)", "",
            "labels read = train + validation labels (share of the labels available); steps: optimiser steps "
            "trained; best step: the step of the checkpoint chosen on validation; blank: not in the jobs' "
            "metrics.json.", "",
            *md_table(["arm", "labels", "train labels", "val labels", "labels read", "val protocol", "steps",
                        "best step", "epochs"], rows)]


def _interval(low: float, high: float, pairs: int, unknown: str) -> str:
    if pairs < 2:
        return "n=1: no interval"
    return unknown if math.isnan(low) else f"[{low:+.3f}, {high:+.3f}]"


def paired_md(paired: pd.DataFrame, num_folds: int | None) -> list[str]:
    """The paired differences of the arms with one baseline: what the intervals are and assume, a warning
    and the stricter column where seeds share a partition (``shares_partitions``), then the table."""
    shared = bool(paired.shared_partition.any())
    no_strict = "k unknown" if num_folds is None else "n=1: no interval"
    rows = []
    for r in paired.itertuples():
        if r.pairs == 0:
            rows.append([r.arm, pct(r.label_fraction), "0", "-", "-", "-", "no run finished in both arms",
                         *["-"] * shared, "-"])
            continue
        strict = [_interval(r.strict_ci_low, r.strict_ci_high, 2, no_strict) if r.shared_partition
                  else "= corrected (re-partitioned)"] if shared else []
        repetitions = f"{r.repetitions} (seed {r.seeds}; split seed {r.split_seeds})"
        rows.append([r.arm, pct(r.label_fraction), str(r.pairs), r.folds, repetitions, f"{r.diff_mean:+.3f}",
                     _interval(r.ci_low, r.ci_high, r.pairs, "k unknown"), *strict,
                     _interval(r.naive_ci_low, r.naive_ci_high, r.pairs, "-")])
    header = ["arm", "labels", "pairs", "folds", "repetitions", "mean diff", f"{CONFIDENCE:.0%} CI (corrected)",
              *[f"{CONFIDENCE:.0%} CI, seeds averaged per fold (stricter)"] * shared,
              f"{CONFIDENCE:.0%} CI naive (pairs treated as independent)"]
    return [f"## Paired difference: arm minus {paired.baseline.iloc[0]}, same split seed, fold and seed", "",
            *_paired_note(num_folds), *(_shared_note(paired) if shared else []), "", *md_table(header, rows)]


def _paired_note(num_folds: int | None) -> list[str]:
    """What the interval columns are, and the assumptions behind the corrected one."""
    k = f"k = {num_folds} (data.num_folds)" if num_folds else "k unknown (no data.num_folds in the job configs)"
    overlap = f" ({(num_folds - 2) / (num_folds - 1):.0%} at k = {num_folds})" if num_folds else ""
    return [f"**{CONFIDENCE:.0%} CI (corrected)**, the headline: corrected repeated k-fold t (Bouckaert & Frank, "
            "2004), the corrected resampled t of Nadeau & Bengio (2003) over all n = k x r pairs (k folds, r "
            "repetitions = distinct seed x split seed, the repetitions column): standard error sqrt(1/n + "
            "n_test/n_train) * s, s the sample SD of the n differences, t on n - 1 degrees of freedom, n = pairs; "
            "with r = 1 it is Nadeau & Bengio's interval over the folds. It assumes (1) that every repetition is a "
            "new random partition into k folds (its own data.split_seed: experiment=paper and paper_cpu set "
            "data.split_seed to the seed), and (2) k-fold cross-validation, test = one fold and training = the "
            f"other k - 1 folds, so n_test/n_train = 1/(k - 1), with {k}: the ratio of the fold sizes, not of "
            "the labelled images a label fraction's job trains on (at fraction f that ratio is about "
            "1/(f (k - 1)), 5 at 5 % of 5 folds, and the interval would be wider). The term widens the interval "
            f"for the overlap of the folds' training sets{overlap}, and more seeds do not remove it (they re-use "
            "the same images). It is a heuristic correction, not an exact one.  ",
            f"**{CONFIDENCE:.0%} CI naive (pairs treated as independent)**: the plain t interval over the n "
            "differences, too narrow because folds and seeds share training images; shown for comparison only."]


def _shared_note(paired: pd.DataFrame) -> list[str]:
    """The warning above a table whose rows pair several seeds on one partition, and the stricter column."""
    rows = paired[paired.shared_partition.astype(bool)]
    splits = ",".join(sorted(set(",".join(rows.split_seeds.astype(str)).split(","))))
    return ["", f"**Assumption (1) is not met in {len(rows)} row(s): their repetitions share a partition** "
            f"(split seed {splits} under several seeds), so differences on one test fold share its images and the "
            "corrected interval is narrower than its assumption allows. **CI, seeds averaged per fold "
            "(stricter)** reads such a row without it: each test fold's differences averaged over its seeds, "
            "then the same corrected t over those fold means (n = k x partitions; with one split seed, Nadeau & "
            "Bengio's corrected k-fold t over the k fold means, r = 1). To re-partition, sweep `seed` with "
            "experiment=paper or paper_cpu (data.split_seed follows it), not `seed` on a fixed data.split_seed."]


def collapsed_lines(finished: pd.DataFrame) -> list[str]:
    """One line per finished job that predicted a single grade for its whole test fold."""
    lines = []
    for job in finished[finished.grades_predicted == 1].itertuples():
        grade = "one grade" if math.isnan(job.collapsed_to) else f"grade {job.collapsed_to:.0f}"
        who = describe(job.arm, job.label_fraction, job.fold, job.seed, job.split_seed, job.protocol)
        lines.append(f"- job {job.job}: {who} predicts {grade} for every test image (test QWK {job.test_qwk:.3f})")
    return lines


def fixed_val_warning(jobs: pd.DataFrame) -> list[str]:
    """The top-of-report warning when any job drew its validation labels outside its label fraction."""
    fixed = jobs[jobs.val_protocol == FIXED_VAL]
    if fixed.empty:
        return []
    return [f"**Optimistic results: {len(fixed)} job(s) ran with val_protocol={FIXED_VAL}** (arms: "
            f"{', '.join(sorted(set(fixed.arm)))}): their validation labels were drawn outside the label fraction, so "
            "the labels read exceed the fraction (see *labels read* below) and their results are optimistic.", ""]
