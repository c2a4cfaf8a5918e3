"""Screening figures in the report: per row x fraction the mean test (and external) sensitivity and specificity at
the operating point fixed on validation, and the mean ECE, each over the runs where it is defined.

A job run with the screening evaluation (``ssl_dr.training.screening``, conf/evaluation) writes these into its
metrics.json beside its own patient-bootstrap intervals of test QWK and referable AUROC. The report's section and
``report_screening.csv`` appear only when some finished job carries them: an older sweep reports as before.
Torch-free (the report runs on a laptop).
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from ssl_dr.reporting import stats as report_stats

CSV_NAME = "report_screening.csv"
FIGURES = {"test_sensitivity": "test/sensitivity_at_operating_point",
           "test_specificity": "test/specificity_at_operating_point",
           "test_ece": "test/ece", "test_ece_referable": "test/ece_referable",
           "test_qwk_interval": ("test/qwk_ci_low", "test/qwk_ci_high"),
           "external_sensitivity": "external/sensitivity_at_operating_point",
           "external_specificity": "external/specificity_at_operating_point",
           "external_ece": "external/ece", "external_ece_referable": "external/ece_referable",
           "external_qwk_interval": ("external/qwk_ci_low", "external/qwk_ci_high")}
"""A job's screening figure -> its metrics.json key (a pair of keys: the width, high - low, of that run's own
interval). report_screening.csv holds per figure its mean over a cell's runs where it is defined (``<figure>``) and
how many runs that is (``<figure>_runs``); the external_* columns only when some job graded an external set."""
HEADERS = {"test_sensitivity": "test sensitivity", "test_specificity": "test specificity",
           "test_ece": "test ECE", "test_ece_referable": "test ECE (referable)",
           "test_qwk_interval": "width of one run's test QWK interval",
           "external_sensitivity": "external sensitivity", "external_specificity": "external specificity",
           "external_ece": "external ECE", "external_ece_referable": "external ECE (referable)",
           "external_qwk_interval": "width of one run's external QWK interval"}
TARGETS = ("sensitivity", "specificity")
NO_TARGET = ""  # a screened job without an operating point (evaluation.referable_target=null)
MARKERS = ("operating_point/threshold", "bootstrap/resamples",
           *(key for key in FIGURES.values() if isinstance(key, str)))
"""Any of these in metrics.json: the job ran the screening evaluation (its figures may still all be NaN)."""


# ---------------------------------------------------------------- what one job says


def screening_facts(metrics: dict | None) -> dict[str, Any]:
    """A job's FIGURES (NaN where absent or undefined); ``screened``: its metrics.json has any MARKERS key;
    ``operating_point``: its target as the report names it (``sensitivity >= 0.9``; None without one);
    ``bootstrap``: its per-run interval's level and resamples (``95% patient bootstrap, 1000 resamples``; None
    without one); ``temperature_scaled``: it fitted a temperature on validation."""
    metrics = metrics or {}
    figures = pd.to_numeric(pd.Series({name: _figure(metrics, key) for name, key in FIGURES.items()}, dtype=object),
                            errors="coerce")  # absent (None) or not a number: NaN, never a failure
    target = next(((kind, metrics[f"operating_point/{kind}_target"]) for kind in TARGETS
                   if f"operating_point/{kind}_target" in metrics), None)
    return {**figures.to_dict(), "screened": any(key in metrics for key in MARKERS),
            "operating_point": f"{target[0]} >= {_shown(target[1], 'g')}" if target else None,
            "bootstrap": _bootstrap(metrics.get("bootstrap/resamples"), metrics.get("bootstrap/level")),
            "temperature_scaled": "calibration/temperature" in metrics}


def _figure(metrics: dict, key: str | tuple[str, str]) -> object:
    """The value under ``key``, or for a (low, high) pair the interval's width (None where either is missing)."""
    if isinstance(key, str):
        return metrics.get(key)
    low, high = (pd.to_numeric(pd.Series([metrics.get(k)], dtype=object), errors="coerce")[0] for k in key)
    return high - low


def _shown(value: object, spec: str) -> str:
    """A number as ``spec`` formats it; anything else as its text (a hand-edited metrics.json never fails)."""
    return format(value, spec) if isinstance(value, int | float) else str(value)


def _bootstrap(resamples: object, level: object) -> str | None:
    if not resamples:  # absent, or bootstrap.resamples=0
        return None
    return ("" if level is None else f"{_shown(level, '.0%')} ") + f"patient bootstrap, {resamples} resamples"


def screened(finished: pd.DataFrame) -> bool:
    """Whether any finished job ran the screening evaluation (older sweeps: none did)."""
    return bool(finished.screened.any())


# ---------------------------------------------------------------- per row x fraction


def summarise(finished: pd.DataFrame, names: list[str], fractions: list[float], external: bool) -> pd.DataFrame:
    """One row per row name (``arm``) x fraction, finished or not: its finished runs and, per figure (test only
    unless ``external``), the mean over the runs where it is defined and their count."""
    figures = [name for name in FIGURES if external or not name.startswith("external_")]
    index = pd.MultiIndex.from_product([names, fractions], names=["arm", "label_fraction"])
    groups = finished.groupby(["arm", "label_fraction"])
    table = pd.concat([groups.size().rename("runs_present"), groups[figures].mean(),
                       groups[figures].count().add_suffix("_runs")], axis=1).reindex(index).reset_index()
    counts = ["runs_present", *(f"{name}_runs" for name in figures)]
    table[counts] = table[counts].fillna(0).astype(int)
    return table[["arm", "label_fraction", "runs_present",
                  *(column for name in figures for column in (name, f"{name}_runs"))]]


# ---------------------------------------------------------------- as markdown


def md_lines(table: pd.DataFrame, finished: pd.DataFrame) -> list[str]:
    """The report's screening section: the operating point named once, what the cells and ECE are, where each
    run's own bootstrap interval is, then the table."""
    figures = [name for name in FIGURES if name in table.columns]
    rows = [[r.arm, report_stats.pct(r.label_fraction), str(r.runs_present),
             *(_cell(getattr(r, name), getattr(r, f"{name}_runs"), r.runs_present) for name in figures)]
            for r in table.itertuples()]
    external = " and the external set" if "external_ece" in figures else ""
    return ["## Screening: the operating point fixed on validation, and calibration (mean over runs)", "",
            *_target_lines(finished, external), "",
            "Each cell: the mean over the finished runs where the figure is defined, and (n/m) when only n of the "
            "m runs define it (NaN in a run whose slice holds one side of grade >= 2 only, or, for ECE, a head "
            "without grade probabilities); n/a: no run defines it. ECE: the expected calibration error of the top "
            "grade probability (test/ece) and of P(grade >= 2) against being referable (test/ece_referable), "
            f"lower is better.{_temperature_note(finished)}  ",
            *_bootstrap_line(finished, external), "",
            *report_stats.md_table(["arm", "labels", "runs", *(HEADERS[name] for name in figures)], rows)]


def _cell(mean: float, defined: int, runs: int) -> str:
    if not runs:
        return "-"
    if not defined:
        return "n/a"
    return f"{mean:.3f}" + (f" ({defined}/{runs})" if defined < runs else "")


def _target_lines(finished: pd.DataFrame, external: str) -> list[str]:
    """The operating point named once; a warning when the jobs fixed different targets (their cells mix them)."""
    counts = finished[finished.screened].operating_point.fillna(NO_TARGET).value_counts()
    if list(counts.index) == [NO_TARGET]:
        return ["**Operating point: none** (the jobs ran with evaluation.referable_target=null): no sensitivity or "
                "specificity at one."]
    named = {target: "none" if target == NO_TARGET else f"{target} on validation" for target in counts.index}
    if len(counts) == 1:
        shown = named[counts.index[0]]
    else:
        shown = ", ".join(f"{named[target]} ({count} job{'s' * (count != 1)})" for target, count in counts.items())
    lines = [f"**Operating point: {shown}** (evaluation.referable_target): each run's threshold on its referable "
             f"score, chosen on its own validation slice, then read once on the test fold{external} "
             "(operating_point/threshold in metrics.json)."]
    if len(counts) > 1:
        lines.append(f"**WARNING: the jobs used {len(counts)} different operating points**: the sensitivity and "
                     "specificity columns average over them; report each target from a sweep of its own.")
    return lines


def _temperature_note(finished: pd.DataFrame) -> str:
    scaled = int(finished.temperature_scaled.sum())
    if not scaled:
        return ""
    return (f" {scaled} of {len(finished)} runs fitted a temperature on validation "
            "(evaluation.temperature_scaling): their ECE and operating point are after it "
            "(test/ece_before_temperature in metrics.json).")


def _bootstrap_line(finished: pd.DataFrame, external: str) -> list[str]:
    """Where a run's own interval of its test QWK and referable AUROC is, and that it is not the arms' paired one."""
    kinds = finished.bootstrap.dropna()
    if kinds.empty:
        return []
    which = ", ".join(sorted(set(kinds)))
    jobs = "each job's" if len(kinds) == len(finished) else f"{len(kinds)} of {len(finished)} jobs'"
    return [f"**Per-run intervals**: {jobs} own interval ({which}, both eyes of a patient together) of its test QWK "
            f"and referable AUROC{external} is in its metrics.json (test/qwk_ci_low, test/qwk_ci_high, "
            "test/auroc_referable_ci_low, test/auroc_referable_ci_high"
            f"{', the same under external/' if external else ''}): the uncertainty of that one run's test score, "
            "not the paired arm-minus-baseline interval; the table gives the mean width of the QWK interval."]
