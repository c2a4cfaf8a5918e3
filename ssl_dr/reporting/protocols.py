"""The protocol as an axis of the report: one row per arm x protocol x fraction, pairs within a protocol.

A job grades its arm with the fine-tune (the paper's) or with a linear or k-NN probe on the arm's frozen
features (``protocol=...``). These are different measurements of one arm, never each other's pair: rotation
under a linear probe is compared with the baseline under a linear probe (same split seed, fold and seed). The
statistics (``stats``) group and pair by one name per row, so a sweep with a probe names each row by arm and
protocol, ``rotation (linear)``, and pairs each protocol's arms with that protocol's baseline. A sweep of
fine-tunes only keeps the plain arm names: its report is the one it was before protocols existed.

The classical arm (no network: colour and texture statistics) is the reference line: a deep arm below it under
the same protocol and fraction has learnt nothing about retinopathy those statistics do not already give.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from ssl_dr.reporting import stats as report_stats
from ssl_dr.reporting.identity import CLASSICAL
from ssl_dr.reporting.jobs import SweepResults
from ssl_dr.run_contract import FINETUNE


@dataclass(frozen=True)
class Rows:
    """The report's rows: ``names`` (arm-major within each protocol), the finished jobs with ``arm`` replaced by
    their row's name, and each name's arm and protocol."""

    names: list[str]
    finished: pd.DataFrame
    arm_of: dict[str, str]
    protocol_of: dict[str, str]

    @property
    def by_protocol(self) -> bool:
        """Whether rows are named by protocol (some protocol other than the fine-tune)."""
        return set(self.protocol_of.values()) != {FINETUNE}


def row_name(arm: str, protocol: str, by_protocol: bool) -> str:
    return f"{arm} ({protocol})" if by_protocol else arm


def rows(results: SweepResults) -> Rows:
    """Every expected arm x protocol as a row (a sweep of probes: protocol by protocol, arms in order)."""
    by_protocol = results.protocols != [FINETUNE]
    cells = [(arm, protocol) for protocol in results.protocols for arm in results.arms]
    names = [row_name(arm, protocol, by_protocol) for arm, protocol in cells]
    finished = results.finished.copy()
    finished["arm"] = [row_name(arm, protocol, by_protocol) for arm, protocol in
                       zip(finished.arm, finished.protocol, strict=True)]
    return Rows(names, finished, dict(zip(names, (a for a, _ in cells), strict=True)),
                dict(zip(names, (p for _, p in cells), strict=True)))


def paired_within_protocol(table_rows: Rows, fractions: list[float], num_folds: int | None) -> pd.DataFrame:
    """``stats.paired_differences`` of each protocol's rows with that protocol's baseline row (``baseline`` names
    it: one paired section per protocol); with rows named by protocol, a ``protocol`` column after ``arm``."""
    frames = []
    for protocol in dict.fromkeys(table_rows.protocol_of.values()):
        names = [name for name in table_rows.names if table_rows.protocol_of[name] == protocol]
        baseline = row_name(report_stats.BASELINE, protocol, table_rows.by_protocol)
        frames.append(report_stats.paired_differences(table_rows.finished, names, fractions, num_folds, baseline))
    paired = pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
    return with_protocol(paired, table_rows)


def with_protocol(frame: pd.DataFrame, table_rows: Rows) -> pd.DataFrame:
    """``frame`` with a ``protocol`` column after ``arm`` when rows are named by protocol (report.csv and
    report_paired.csv, to filter on); unchanged otherwise."""
    if not table_rows.by_protocol:
        return frame
    frame = frame.copy()
    frame.insert(frame.columns.get_loc("arm") + 1, "protocol", frame.arm.map(table_rows.protocol_of))
    return frame


def classical_line(table: pd.DataFrame, table_rows: Rows) -> list[str]:
    """One line beside the table when the sweep has the classical arm: what it is, and the deep rows whose mean
    test QWK is below the classical row of the same protocol and fraction."""
    if CLASSICAL not in table_rows.arm_of.values():
        return []
    qwk = table.set_index(["arm", "label_fraction"]).qwk_avg
    reference = {(name, fraction): qwk.get((row_name(CLASSICAL, table_rows.protocol_of[name],
                                                     table_rows.by_protocol), fraction), math.nan)
                 for name, fraction in qwk.index}
    below = [f"{name} at {report_stats.pct(fraction)}" for name, fraction in qwk.index
             if table_rows.arm_of[name] != CLASSICAL and qwk[name, fraction] < reference[name, fraction]]
    found = f"Below it here: {', '.join(below)}." if below else "No deep arm is below it here."
    return [f"**{CLASSICAL}** is the reference without a network (colour, green-channel and edge statistics, graded "
            "by the same probe): a deep arm below it under the same protocol has learnt nothing about retinopathy "
            f"that colour/texture statistics do not already give. {found}"]
