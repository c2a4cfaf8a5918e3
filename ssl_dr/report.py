"""Sweep folder -> the paper's table (MIN / AVG / MAX test QWK over folds) + a QWK-vs-fraction plot.

Why a module of its own: a sweep where a job crashed or was deleted must never turn quietly into a 4-fold
average printed next to 5-fold ones. Every expected job (arm x label fraction x fold, from ``multirun.yaml``
and the job configs) without a result is named at the top of the report, and the CLI exits 1. Beside QWK each
arm x fraction shows what makes it trustworthy: how many runs collapsed to one grade (``test_predictions.csv``),
the labels read (train + validation; a ``val_protocol=fixed`` run reads more than its fraction, and the report
says so at the top) and the training budget (optimiser steps, the step of the chosen checkpoint). Arms are
compared with the ``baseline`` arm fold by fold (same split, paired) with the corrected resampled t interval of
Nadeau & Bengio, because the folds' training sets overlap (see ``ssl_dr.reporting.stats``); the naive t interval
stands beside it, labelled.

``python -m ssl_dr.report <sweep_dir> [--no-paper-reference]`` writes ``report.md``, ``report.csv``,
``report_paired.csv`` and ``qwk_vs_fraction.png`` into the sweep folder; exit 0 complete, 1 incomplete,
2 bad input.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pandas as pd
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ssl_dr.launch.resolvers import register_resolvers
from ssl_dr.reporting import stats as report_stats

PAPER_ROTATION_AVG: dict[float, float] = {0.05: 0.294, 0.10: 0.432, 0.25: 0.575, 0.50: 0.680, 1.00: 0.725}
"""Published numbers of the paper this project reproduces: AVG test QWK over its 5 folds of the rotation-pretext
DenseNet121, per label fraction (the "AVG" row of its results table). Drawn as the dashed reference line."""

ARM_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
FINISHED, FAILED = "finished", "failed"
# ssl_dr.training.predictions.PREDICTIONS_NAME, not imported: that pulls in Lightning
PREDICTIONS = "test_predictions.csv"
# job config keys that identify a job, and the sweep override keys that set them
CONFIG_KEYS = {"arm": "arm", "label_fraction": "data.label_fraction", "fold": "data.fold"}
# overrides that choose the arm by a name (the `arm` and `experiment` config groups): name -> arm via job configs
ARM_CHOOSERS = ("arm", "experiment")


class ReportError(ValueError):
    """The sweep folder cannot be reported on (missing, no jobs, a malformed file); the message says what to do."""


@dataclass(frozen=True)
class Gap:
    """An expected job (arm x fraction x fold) without a finished result."""

    kind: str  # MISSING (no job folder) | FAILED (job folder without a usable metrics.json)
    arm: str
    label_fraction: float
    fold: int
    reason: str

    def __str__(self) -> str:
        return f"{self.kind}: arm={self.arm} fraction={self.label_fraction:g} fold={self.fold} ({self.reason})"


@dataclass
class SweepResults:
    """Per-job rows (``job, arm, label_fraction, fold, num_folds, choices, status, test_qwk, reason`` and the
    ``report_stats.job_facts``), the expected value sets (the report covers their cartesian product), the
    expected jobs without a result and the sweep's k (None when no job config names it)."""

    sweep_dir: Path
    jobs: pd.DataFrame
    arms: list[str]
    fractions: list[float]
    folds: list[int]
    gaps: list[Gap]
    expected_from: str
    num_folds: int | None = None

    @property
    def finished(self) -> pd.DataFrame:
        return self.jobs[self.jobs.status == FINISHED]


@dataclass
class ReportFiles:
    """What ``write_report`` wrote (``paired_csv`` is None when there is no baseline to pair with)."""

    markdown: Path
    csv: Path
    paired_csv: Path | None
    plot: Path
    table: pd.DataFrame
    paired: pd.DataFrame
    gaps: list[Gap]

    @property
    def complete(self) -> bool:
        return not self.gaps


# ---------------------------------------------------------------- reading the sweep folder


def _fraction(value: object) -> float:
    return round(float(value), 6)  # 0.1 from a config and "0.10" from multirun.yaml are one fraction


def _job_dirs(sweep_dir: Path) -> list[Path]:
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir}: no such folder; give a Hydra multirun folder "
                          "(outputs/<arm>/multiruns/<stamp>)")
    dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra/config.yaml").is_file() or (d / "metrics.json").is_file()]
    if not dirs:
        hint = " (this is a single run's folder, not a sweep)" if (sweep_dir / ".hydra").is_dir() else ""
        raise ReportError(f"{sweep_dir}: no job folders (<job>/.hydra/config.yaml or <job>/metrics.json){hint}; "
                          "pass the multirun folder that holds the numbered job folders")
    return sorted(dirs, key=lambda d: (not d.name.isdigit(), int(d.name) if d.name.isdigit() else 0, d.name))


def _read_metrics(path: Path) -> tuple[dict | None, str | None]:
    """The job's metrics, or why there are none: a missing, unreadable or partial ``metrics.json`` makes the job
    FAILED (named in the report) instead of ending the report."""
    if not path.is_file():
        return None, None
    try:
        metrics = json.loads(path.read_text())
        metrics["test/qwk"] = float(metrics["test/qwk"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return None, (f"unreadable metrics.json ({type(err).__name__}: {err}); re-run the job (resume=last "
                      "re-runs it) or delete its folder")
    return metrics, None


def _read_identity(job_dir: Path, metrics: dict | None) -> dict:
    """arm / label_fraction / fold of a job from its Hydra files (there even if it crashed), else from metrics.json;
    ``choices``: its overrides of ARM_CHOOSERS (``{"experiment": "rotation"}``); ``num_folds``: the k of its k-fold
    split (``data.num_folds``; None without a config), which sizes the corrected interval."""
    path, overrides = job_dir / ".hydra" / "config.yaml", job_dir / ".hydra" / "overrides.yaml"
    try:
        if path.is_file():
            cfg = OmegaConf.load(path)
            values = {name: OmegaConf.select(cfg, key) for name, key in CONFIG_KEYS.items()}
            num_folds = OmegaConf.select(cfg, "data.num_folds")
        else:
            values, num_folds = {name: metrics.get(name) for name in CONFIG_KEYS}, None
        if None in values.values():
            raise KeyError(f"needs {', '.join(CONFIG_KEYS.values())}")
        lines = OmegaConf.to_container(OmegaConf.load(overrides)) if overrides.is_file() else []
        pairs = [line.split("=", 1) for line in lines if "=" in line]
        return {"arm": str(values["arm"]), "label_fraction": _fraction(values["label_fraction"]),
                "fold": int(values["fold"]), "num_folds": None if num_folds is None else int(num_folds),
                "choices": {key.lstrip("+~"): value for key, value in pairs if key.lstrip("+~") in ARM_CHOOSERS}}
    except Exception as err:  # yaml / omegaconf / conversion errors all mean: not a readable ssl_dr job
        source = path if path.is_file() else job_dir / "metrics.json"
        raise ReportError(f"{source}: cannot read the job's arm, fraction and fold ({type(err).__name__}: {err}); "
                          "is this an ssl_dr sweep? Delete the job folder to have it reported as missing") from None


def _last_log_line(job_dir: Path) -> str | None:
    logs = sorted(job_dir.glob("*.log"), key=lambda p: (p.name == "train.log", p.stat().st_mtime))
    lines = [line.strip() for line in logs[-1].read_text(errors="replace").splitlines() if line.strip()] if logs else []
    return lines[-1][:300] if lines else None


def _read_job(job_dir: Path) -> dict:
    metrics, unreadable = _read_metrics(job_dir / "metrics.json")
    row = {"job": job_dir.name, **_read_identity(job_dir, metrics), "status": FAILED, "test_qwk": math.nan,
           **report_stats.job_facts(metrics, job_dir / PREDICTIONS)}
    if unreadable:
        row["reason"] = unreadable
    elif metrics is None:
        row["reason"] = _last_log_line(job_dir) or "no metrics.json and no log: crashed early or still running"
    elif not math.isfinite(metrics["test/qwk"]):
        row["reason"] = f"test/qwk is {metrics['test/qwk']} in metrics.json"
    else:
        row.update(status=FINISHED, test_qwk=metrics["test/qwk"], reason="")
    return row


def _swept_values(sweep_dir: Path) -> tuple[dict[str, list[str]], str]:
    """Override key -> values, from multirun.yaml's ``hydra.sweeper.params`` and command-line overrides."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return {}, "job configs only: no multirun.yaml"
    try:
        cfg = OmegaConf.load(path)
        params = _sweeper_params(OmegaConf.select(cfg, "hydra.sweeper.params") or OmegaConf.create({}))
        overrides = [f"{key}={value}" for key, value in params.items()]
        overrides += OmegaConf.to_container(OmegaConf.select(cfg, "hydra.overrides.task") or OmegaConf.create([]))
    except Exception as err:  # an unreadable multirun.yaml only narrows what is expected
        return {}, f"job configs only (multirun.yaml unreadable: {type(err).__name__})"
    swept: dict[str, list[str]] = {}
    parser = OverridesParser.create()
    for text in overrides:  # later overrides win, as in Hydra (command line over sweeper params)
        try:
            override = parser.parse_override(text)
            values = (list(override.sweep_string_iterator()) if override.is_sweep_override()
                      else [str(override.value())])
        except Exception:  # non-discrete sweeps (interval, glob) expect nothing specific
            continue
        swept[override.key_or_group] = values
    return swept, "multirun.yaml sweep + job configs"


def _sweeper_params(params: DictConfig) -> dict:
    """``hydra.sweeper.params`` as the sweeper saw them: multirun.yaml keeps interpolations such as
    ``arm: ${ssl_dr.sweep_values:${arms}}`` (experiment=paper) unresolved, so resolve them against the file."""
    register_resolvers()
    try:
        return OmegaConf.to_container(params, resolve=True)
    except Exception:  # an interpolation that needs the live run (e.g. ${hydra:...}): keep the text
        return OmegaConf.to_container(params)


def _converted(values: list[str], convert: Callable[[str], object]) -> set:
    try:
        return {convert(value) for value in values}
    except ValueError:  # a swept value that is no number (an interpolation, ...) expects nothing specific
        return set()


def _expected(jobs: pd.DataFrame, swept: dict[str, list[str]]) -> tuple[list[str], list[float], list[int]]:
    """Expected value sets: swept values UNION values seen in the job configs. A swept ``arm=<name>`` or
    ``experiment=<name>`` counts as the arm its jobs' configs name; with no job left to tell, as the arm ``<name>``."""
    to_arm = {(key, name): job.arm for job in jobs.itertuples() for key, name in job.choices.items()}
    arms = set(jobs.arm) | {to_arm.get((key, name), name) for key in ARM_CHOOSERS for name in swept.get(key, [])}
    fractions = set(jobs.label_fraction) | _converted(swept.get(CONFIG_KEYS["label_fraction"], []), _fraction)
    folds = set(jobs.fold) | _converted(swept.get(CONFIG_KEYS["fold"], []), int)
    return sorted(arms), sorted(fractions), sorted(folds)


def _check_unique(jobs: pd.DataFrame, sweep_dir: Path) -> None:
    dup = jobs[jobs.duplicated(["arm", "label_fraction", "fold"], keep=False)]
    if not dup.empty:
        first = dup.iloc[0]
        names = ", ".join(dup[(dup.arm == first.arm) & (dup.label_fraction == first.label_fraction)
                              & (dup.fold == first.fold)].job)
        raise ReportError(f"{sweep_dir}: jobs {names} are all arm={first.arm} fraction={first.label_fraction:g} "
                          f"fold={first.fold}; the report groups by arm x fraction x fold, so give each swept setting "
                          "its own arm (e.g. arm=rotation_lr1e-3)")


def _num_folds(jobs: pd.DataFrame, sweep_dir: Path) -> int | None:
    """The one k of the sweep's k-fold split: fold numbers of different splits are different test sets, so
    pairing or averaging them would compare nothing."""
    ks = sorted({int(k) for k in jobs.num_folds.dropna()})
    if len(ks) > 1:
        raise ReportError(f"{sweep_dir}: jobs use data.num_folds={', '.join(map(str, ks))}; folds of different "
                          "splits cannot be paired or averaged, so report each k from a sweep of its own")
    return ks[0] if ks else None


def _gaps(jobs: pd.DataFrame, arms: list[str], fractions: list[float], folds: list[int]) -> list[Gap]:
    by_key = {(job.arm, job.label_fraction, job.fold): job for job in jobs.itertuples()}
    gaps = []
    for key in product(arms, fractions, folds):
        job = by_key.get(key)
        if job is None:
            gaps.append(Gap("MISSING", *key, "no job folder"))
        elif job.status != FINISHED:
            gaps.append(Gap("FAILED", *key, f"job {job.job}: {job.reason}"))
    return gaps


def collect(sweep_dir: Path) -> SweepResults:
    """Read every job of a Hydra multirun folder; list the expected jobs that have no finished result."""
    sweep_dir = Path(sweep_dir)
    jobs = pd.DataFrame([_read_job(job_dir) for job_dir in _job_dirs(sweep_dir)])
    _check_unique(jobs, sweep_dir)
    num_folds = _num_folds(jobs, sweep_dir)
    swept, expected_from = _swept_values(sweep_dir)
    arms, fractions, folds = _expected(jobs, swept)
    return SweepResults(sweep_dir, jobs, arms, fractions, folds, _gaps(jobs, arms, fractions, folds), expected_from,
                        num_folds)


# ---------------------------------------------------------------- markdown and plot


def to_markdown(results: SweepResults, table: pd.DataFrame, paired: pd.DataFrame) -> str:
    """The report: warnings first (labels read beyond the fraction, incomplete jobs, collapsed runs), then the
    QWK table, labels read and training budget, and the paired differences."""
    lines = [f"# Sweep report: {results.sweep_dir.name}", "", f"Sweep folder: `{results.sweep_dir}`  ",
             f"Expected jobs ({results.expected_from}): {len(results.arms)} arms x {len(results.fractions)} "
             f"fractions x {len(results.folds)} folds = {len(table) * len(results.folds)}", "",
             *report_stats.fixed_val_warning(results.jobs)]
    if results.gaps:
        lines += [f"## Incomplete: {len(results.gaps)} expected job(s) have no result", "",
                  "The numbers below use only the folds that finished (see the folds column).", "",
                  *(f"- {gap}" for gap in results.gaps), ""]
    if collapsed := report_stats.collapsed_lines(results.finished):
        lines += [f"## Collapsed: {len(collapsed)} finished job(s) predict a single grade for the whole test fold", "",
                  "Such a run learnt one grade (as a rule the majority): its QWK shows failed training, not the arm.",
                  "", *collapsed, ""]
    lines += [*report_stats.qwk_md(table), "", *report_stats.budget_md(table), ""]
    for baseline in paired.baseline.unique():
        lines += [*report_stats.paired_md(paired[paired.baseline == baseline], results.num_folds), ""]
    return "\n".join(lines)


def plot(table: pd.DataFrame, path: Path, title: str, paper_reference: bool = True) -> None:
    """Test QWK vs label fraction (log x): per arm the mean over folds and a min-max band; the paper dashed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    handles, labels = [], []
    arms = list(dict.fromkeys(table.arm))
    for i, (arm, rows) in enumerate(table.groupby("arm", sort=False)):
        # a marker of its own per arm: five arms' bands overlap, and the plot may be printed in grey
        (line,) = ax.plot(rows.label_fraction, rows.qwk_avg, marker=ARM_MARKERS[i % len(ARM_MARKERS)])
        band = ax.fill_between(rows.label_fraction, rows.qwk_min, rows.qwk_max, color=line.get_color(),
                               alpha=0.2 if len(arms) <= 2 else 0.1)
        handles.append((band, line))
        labels.append(f"{arm} (mean over folds, band: min-max)")
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


def write_report(sweep_dir: Path, paper_reference: bool = True) -> ReportFiles:
    """Collect a sweep and write report.md, report.csv, report_paired.csv and qwk_vs_fraction.png into it."""
    sweep_dir = Path(sweep_dir)
    results = collect(sweep_dir)
    table = report_stats.summarise(results.finished, results.arms, results.fractions, len(results.folds))
    paired = report_stats.paired_differences(results.finished, results.arms, results.fractions, results.num_folds)
    files = ReportFiles(sweep_dir / "report.md", sweep_dir / "report.csv",
                        sweep_dir / "report_paired.csv" if len(paired) else None, sweep_dir / "qwk_vs_fraction.png",
                        table, paired, results.gaps)
    table.to_csv(files.csv, index=False)
    (sweep_dir / "report_paired.csv").unlink(missing_ok=True)  # no stale pairs from an earlier report
    if files.paired_csv:
        paired.to_csv(files.paired_csv, index=False)
    files.markdown.write_text(to_markdown(results, table, paired) + "\n")
    status = f"INCOMPLETE: {len(results.gaps)} expected job(s) without result" if results.gaps else "complete"
    plot(table, files.plot, f"Test QWK vs label fraction: {'/'.join(sweep_dir.resolve().parts[-3:])}\n({status})",
         paper_reference)
    return files


def main(argv: list[str] | None = None) -> int:
    """CLI: print the markdown report and the files written; exit 0 complete, 1 incomplete, 2 bad input."""
    parser = argparse.ArgumentParser(prog="python -m ssl_dr.report", description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path, help="a Hydra multirun folder: outputs/<arm>/multiruns/<stamp>")
    parser.add_argument("--paper-reference", action=argparse.BooleanOptionalAction, default=True,
                        help="draw the paper's published rotation AVG as a dashed line in the plot (default: on)")
    args = parser.parse_args(argv)
    try:
        files = write_report(args.sweep_dir, paper_reference=args.paper_reference)
    except (ReportError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(files.markdown.read_text())
    print("written:", *(p for p in (files.markdown, files.csv, files.paired_csv, files.plot) if p), sep="\n  ")
    if files.gaps:
        print(f"incomplete: {len(files.gaps)} expected job(s) have no result (listed above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
