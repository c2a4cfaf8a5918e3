"""Sweep folder -> the paper's table (MIN / AVG / MAX test QWK over folds and seeds) + a QWK-vs-fraction plot.

A module of its own so that a sweep with a crashed or deleted job never turns quietly into a 4-fold average: every
expected job (from ``multirun.yaml`` and the job configs, ``ssl_dr.reporting.jobs``) without a result is named at
the top, and the CLI exits 1. Each arm x fraction also shows its spread over folds and seeds, collapsed runs, the
labels read and the training budget; arms are paired with the ``baseline`` run by run under the corrected repeated
k-fold t interval (``ssl_dr.reporting.stats``), with protocol, external-set and screening sections where jobs have
them. ``write_report`` writes ``report.md``, ``report.csv``, ``report_paired.csv``, ``report_screening.csv`` and
``qwk_vs_fraction.png``; its callers are ``python -m ssl_dr.report`` and the Hydra callback
``ssl_dr.reporting.sweep_end``. What the report says and why: docs/protocol.md, "Seeds and the paired interval".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from ssl_dr.reporting import external, floor, protocols, screening
from ssl_dr.reporting import stats as report_stats
from ssl_dr.reporting.environments import environment_lines
from ssl_dr.reporting.jobs import Gap, SweepResults, collect
from ssl_dr.run_contract import FINETUNE

if TYPE_CHECKING:  # matplotlib is imported when a plot is drawn, not with the report
    from matplotlib.figure import Figure

PAPER_ROTATION_AVG: dict[float, float] = {0.05: 0.294, 0.10: 0.432, 0.25: 0.575, 0.50: 0.680, 1.00: 0.725}
"""Published numbers of the paper this project reproduces: AVG test QWK over its 5 folds of the rotation-pretext
DenseNet121, per label fraction (the "AVG" row of its results table). Drawn as the dashed reference line."""

ARM_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
PROTOCOL_LINES = ("-", ":", "-.")  # the paper's reference is dashed


@dataclass
class ReportFiles:
    """What ``write_report`` wrote (``paired_csv`` is None when there is no baseline to pair with,
    ``screening_csv`` when no job ran the screening evaluation)."""

    markdown: Path
    csv: Path
    paired_csv: Path | None
    plot: Path
    table: pd.DataFrame
    paired: pd.DataFrame
    gaps: list[Gap]
    jobs: pd.DataFrame | None = None
    """The finished jobs: job folder, arm, protocol, fraction, fold, seeds, test QWK and their W&B run id."""
    screening_csv: Path | None = None
    screening: pd.DataFrame | None = None
    """Per row x fraction: the mean operating-point sensitivity / specificity and ECE (``screening.summarise``)."""
    floor_csv: Path | None = None
    """report_floor.csv: every row paired with the classical floor of another sweep (``write_report(floor_dir=)``)."""

    @property
    def complete(self) -> bool:
        return not self.gaps


# ---------------------------------------------------------------- markdown and plot


def to_markdown(results: SweepResults, table: pd.DataFrame, paired: pd.DataFrame, table_rows: protocols.Rows,
                screening_table: pd.DataFrame | None = None, floor_lines: list[str] | None = None) -> str:
    """The report: warnings first (labels read beyond the fraction, incomplete jobs, collapsed runs), then the
    QWK table (with the external set's columns when jobs graded one, the classical reference's line when the
    sweep has it), labels read and training budget, the screening figures (when ``screening_table`` is given)
    and the paired differences (one section per protocol), then ``floor_lines`` (``floor.md_lines``)."""
    lines = [f"# Sweep report: {results.sweep_dir.name}", "", f"Sweep folder: `{results.sweep_dir}`  ",
             f"Expected jobs ({results.expected_from}): {_expected_jobs(results, len(table))}", "",
             *report_stats.fixed_val_warning(results.jobs)]
    # where the numbers were measured, and a warning when one sweep's jobs ran on different stacks
    environments = environment_lines(results.sweep_dir / job for job in results.finished.job)
    lines += [*environments, ""] if environments else []
    if results.gaps:
        lines += [f"## Incomplete: {len(results.gaps)} expected job(s) have no result", "",
                  "The numbers below use only the runs that finished (see the runs column).", "",
                  *(f"- {gap}" for gap in results.gaps), ""]
    if collapsed := report_stats.collapsed_lines(results.finished):
        lines += [f"## Collapsed: {len(collapsed)} finished job(s) predict a single grade for the whole test fold", "",
                  "Such a run learnt one grade (as a rule the majority): its QWK shows failed training, not the arm.",
                  "", *collapsed, ""]
    graded = external.graded(results.finished)
    notes = [*(external.md_lines(results.finished) if graded else []), *protocols.classical_line(table, table_rows)]
    lines += [*report_stats.qwk_md(table, external.md_columns() if graded else ()), "", *notes, *[""] * bool(notes),
              *report_stats.budget_md(table), ""]
    if screening_table is not None:
        lines += [*screening.md_lines(screening_table, table_rows.finished), ""]
    for baseline in paired.baseline.unique():
        lines += [*report_stats.paired_md(paired[paired.baseline == baseline], results.num_folds), ""]
    return "\n".join([*lines, *(floor_lines or [])])


def _expected_jobs(results: SweepResults, cells: int) -> str:
    """``2 arms x 5 fractions x 5 folds x 3 seed(s) (42, 43, 44) x 1 split seed(s) (42) = 150``; where the split
    seed follows the seed: ``... x 5 folds x 3 repetition(s) (seed/split seed: 42/42, 43/43, 44/44) = 150``; a
    sweep of probes: ``3 arms x 2 protocols (knn, linear) x ...``."""
    if len(results.repetitions) == len(results.seeds) * len(results.split_seeds):  # every seed x split seed
        repetitions = (f"{len(results.seeds)} seed(s) ({', '.join(map(str, results.seeds))}) x "
                       f"{len(results.split_seeds)} split seed(s) ({', '.join(map(str, results.split_seeds))})")
    else:
        pairs = ", ".join(f"{seed}/{split_seed}" for seed, split_seed in results.repetitions)
        repetitions = f"{len(results.repetitions)} repetition(s) (seed/split seed: {pairs})"
    protocols = (f"{len(results.protocols)} protocol(s) ({', '.join(results.protocols)}) x "
                 if results.protocols != [FINETUNE] else "")
    return (f"{len(results.arms)} arms x {protocols}{len(results.fractions)} fractions x {len(results.folds)} folds x "
            f"{repetitions} = {cells * results.runs_per_cell}")


def plot(table: pd.DataFrame, path: Path, title: str, paper_reference: bool = True) -> Figure:
    """Test QWK vs label fraction (log x): per row (arm, or arm x protocol) the mean over runs (folds x seeds)
    and a min-max band; the paper dashed. Rows of several protocols: one colour per arm, one line style per
    protocol. Returns the figure it saved."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles, labels = [], []
    arms = list(dict.fromkeys(table.arm))
    styles = _protocol_styles(table)
    for i, (arm, rows) in enumerate(table.groupby("arm", sort=False)):
        # a marker of its own per arm: five arms' bands overlap, and the plot may be printed in grey
        (line,) = ax.plot(rows.label_fraction, rows.qwk_avg, marker=ARM_MARKERS[i % len(ARM_MARKERS)],
                          **styles.get(arm, {}))
        band = ax.fill_between(rows.label_fraction, rows.qwk_min, rows.qwk_max, color=line.get_color(),
                               alpha=0.2 if len(arms) <= 2 else 0.1)
        handles.append((band, line))
        labels.append(f"{arm} (mean over runs, band: min-max)")
    ticks = set(table.label_fraction)
    if paper_reference:
        (ref,) = ax.plot(list(PAPER_ROTATION_AVG), list(PAPER_ROTATION_AVG.values()), "k--", marker="x", alpha=0.7)
        handles.append(ref)
        labels.append("paper (rotation, AVG)")
        ticks |= set(PAPER_ROTATION_AVG)
    ax.set_xscale("log")
    ax.set_xticks(sorted(ticks), [report_stats.pct(t) for t in sorted(ticks)])
    ax.set_xticks([], minor=True)
    ax.set_xlabel("labelled fraction of the training images (log scale)")
    ax.set_ylabel("test QWK (quadratic weighted kappa)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, loc="lower right", fontsize="small" if len(arms) > 2 else None)
    fig.savefig(path, dpi=120)
    return fig


def _protocol_styles(table: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Row name -> colour of its arm and line style of its protocol, for rows named by protocol (a ``protocol``
    column); {} otherwise (matplotlib's own cycle, as before protocols)."""
    if "protocol" not in table.columns:
        return {}
    arms = list(dict.fromkeys(name.rsplit(" (", 1)[0] for name in table.arm))
    kinds = list(dict.fromkeys(table.protocol))
    return {name: {"color": f"C{arms.index(name.rsplit(' (', 1)[0]) % 10}",
                   "linestyle": PROTOCOL_LINES[kinds.index(protocol) % len(PROTOCOL_LINES)]}
            for name, protocol in zip(table.arm, table.protocol, strict=True)}


def _screening_table(results: SweepResults, table_rows: protocols.Rows) -> pd.DataFrame | None:
    """Per row x fraction the screening figures (external ones when jobs graded a set); None when no job has them."""
    if not screening.screened(results.finished):
        return None
    table = screening.summarise(table_rows.finished, table_rows.names, results.fractions,
                                external.graded(results.finished))
    return protocols.with_protocol(table, table_rows)


def write_report(sweep_dir: Path, paper_reference: bool = True, floor_dir: Path | None = None) -> ReportFiles:
    """Collect a sweep and write report.md, report.csv, report_paired.csv, report_screening.csv (jobs with the
    screening evaluation), report_floor.csv (with ``floor_dir``, a sweep holding the classical arm on the same
    photographs: ``ssl_dr.reporting.floor``) and qwk_vs_fraction.png into it."""
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir)
    table_rows = protocols.rows(results)  # one per arm (x protocol, in a sweep of probes)
    table = report_stats.summarise(table_rows.finished, table_rows.names, results.fractions, results.runs_per_cell)
    if external.graded(results.finished):
        table = external.add_columns(table, table_rows.finished)
    table = protocols.with_protocol(table, table_rows)
    screening_table = _screening_table(results, table_rows)
    paired = protocols.paired_within_protocol(table_rows, results.fractions, results.num_folds)
    files = ReportFiles(sweep_dir / "report.md", sweep_dir / "report.csv",
                        sweep_dir / "report_paired.csv" if len(paired) else None, sweep_dir / "qwk_vs_fraction.png",
                        table, paired, results.gaps,
                        results.finished[["job", "arm", "protocol", "label_fraction", "fold", "seed", "split_seed",
                                          "test_qwk", "wandb_run_id"]].reset_index(drop=True),
                        sweep_dir / screening.CSV_NAME if screening_table is not None else None, screening_table)
    table.to_csv(files.csv, index=False)
    (sweep_dir / "report_paired.csv").unlink(missing_ok=True)  # no stale pairs from an earlier report
    if files.paired_csv:
        paired.to_csv(files.paired_csv, index=False)
    (sweep_dir / screening.CSV_NAME).unlink(missing_ok=True)  # nor stale screening figures
    if files.screening_csv:
        screening_table.to_csv(files.screening_csv, index=False)
    floor_lines = None
    (sweep_dir / floor.CSV_NAME).unlink(missing_ok=True)  # nor a stale floor
    if floor_dir is not None:
        floor_results = collect(Path(floor_dir))
        floor_paired = floor.floor_pairs(table_rows, results, floor_results)
        files.floor_csv = sweep_dir / floor.CSV_NAME
        floor_paired.to_csv(files.floor_csv, index=False)
        floor_lines = floor.md_lines(floor_paired, floor_results, results.num_folds)
    files.markdown.write_text(to_markdown(results, table, paired, table_rows, screening_table, floor_lines) + "\n")
    status = f"INCOMPLETE: {len(results.gaps)} expected job(s) without result" if results.gaps else "complete"
    plot(table, files.plot, f"Test QWK vs label fraction: {'/'.join(sweep_dir.resolve().parts[-3:])}\n({status})",
         paper_reference)
    return files
