"""A sweep's rows paired with the classical floor of another sweep (``python -m ssl_dr.report SWEEP --floor PROBES``).

The classical arm has no network, so it cannot be fine-tuned: a fine-tune sweep has no floor row of its own, and
the floor lives in the probe sweep on the same photographs. Its jobs on the same partition (split seed), fold,
seed and label fraction tested the same images after reading the same labels, so each fine-tune job is paired
with the classical job of each probe, and the report's corrected interval applies unchanged. The two sweeps must
have split the same data the same way: every pair's folds file (named by k, split seed and a hash of the data)
must be one file, else the report refuses.
"""

from __future__ import annotations

import pandas as pd

from ssl_dr.reporting import protocols
from ssl_dr.reporting import stats as report_stats
from ssl_dr.reporting.identity import CLASSICAL
from ssl_dr.reporting.jobs import ReportError, SweepResults

CSV_NAME = "report_floor.csv"


def floor_pairs(table_rows: protocols.Rows, results: SweepResults, floor: SweepResults) -> pd.DataFrame:
    """``stats.paired_differences`` of every non-classical row of ``results`` with each classical row of ``floor``
    (one per protocol: ``classical (linear)``, ...) as the baseline, at ``results``' fractions; the columns of
    report_paired.csv. Refused: a floor without finished classical jobs, another k, or pairs on other folds."""
    classical = floor.finished[floor.finished.arm == CLASSICAL].copy()
    if classical.empty:
        raise ReportError(f"--floor {floor.sweep_dir}: no finished {CLASSICAL} job; give the probe sweep on the "
                          "same photographs (experiment=real_probe has the classical arm)")
    if floor.num_folds != results.num_folds:
        raise ReportError(f"--floor {floor.sweep_dir}: its folds are of k = {floor.num_folds}, this sweep's of "
                          f"k = {results.num_folds}; only the same k-fold split can be paired")
    classical["arm"] = [protocols.row_name(CLASSICAL, protocol, True) for protocol in classical.protocol]
    deep = table_rows.finished[table_rows.finished.arm.map(table_rows.arm_of) != CLASSICAL]
    if not table_rows.by_protocol:  # name the fine-tune rows by protocol beside the probes' floor rows
        deep = deep.assign(arm=[protocols.row_name(arm, protocol, True)
                                for arm, protocol in zip(deep.arm, deep.protocol, strict=True)])
    _check_same_folds(deep, classical, floor)
    both = pd.concat([deep, classical], ignore_index=True)
    names = list(dict.fromkeys(deep.arm))
    frames = [report_stats.paired_differences(both, [*names, baseline], results.fractions, results.num_folds,
                                              baseline) for baseline in sorted(set(classical.arm))]
    return pd.concat(frames, ignore_index=True)


def _check_same_folds(deep: pd.DataFrame, classical: pd.DataFrame, floor: SweepResults) -> None:
    """Every (split seed, fold) both sweeps hold must come from one folds file: the same data, split the same way."""
    ours = {(job.split_seed, job.fold): (job.job, job.folds_file) for job in deep.itertuples()}
    for job in classical.itertuples():
        if (key := (job.split_seed, job.fold)) not in ours:
            continue
        mine, theirs = ours[key], job.folds_file
        if mine[1] != theirs:
            raise ReportError(f"--floor {floor.sweep_dir}: job {job.job} tested split seed {job.split_seed}, fold "
                              f"{job.fold} of {theirs}, this sweep's job {mine[0]} that of {mine[1]}: other "
                              "photographs or another split, so their test folds are not the same images")


def md_lines(paired: pd.DataFrame, floor: SweepResults, num_folds: int | None) -> list[str]:
    """The section: where the floor comes from, then one paired table per classical row."""
    lines = [f"## Against the classical floor of `{floor.sweep_dir}`", "",
             f"Each job here paired with the {CLASSICAL} job of that sweep on the same split seed, fold, seed and "
             "label fraction (the same test images, the same labels read; checked by the folds file). A row whose "
             "interval lies above zero has learnt more than colour and texture statistics give; one whose interval "
             "holds zero has not been shown to.", ""]
    for baseline in paired.baseline.unique():
        lines += [*report_stats.paired_md(paired[paired.baseline == baseline], num_folds), ""]
    return lines
