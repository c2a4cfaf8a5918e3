"""External validation in the report: the external set's QWK and referable AUROC beside each row's test QWK.

A job run with ``test_data=<option>`` grades a second labelled data set with the model (or probe) chosen on
validation and writes ``external/*`` into its metrics.json (``ssl_dr.training.external``, ``ssl_dr.probes``).
The held-out fold says how well an arm grades images like its training set's; the external set, how well that
survives another camera, population and grader. Jobs without ``external/qwk`` add nothing: a sweep without
external validation keeps its report unchanged. Torch-free (the report runs on a laptop).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import OmegaConf

COLUMNS = ["external_runs", "external_qwk_min", "external_qwk_avg", "external_qwk_max", "external_auroc_referable"]
"""report.csv's columns for the external set, after the others, only when some finished job graded one."""


def _number(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # absent or not a number: blank, never a failure
        return math.nan
    return number


def external_facts(metrics: dict | None, job_dir: Path) -> dict[str, Any]:
    """A job's ``external_qwk``, ``external_auroc_referable`` (NaN without external validation) and
    ``external_root``: the set's folder, from metrics.json's ``external/root`` (the fine-tune writes it), else
    the job config's ``test_data.root`` (the probes' jobs), else None."""
    metrics = metrics or {}
    facts = {"external_qwk": _number(metrics.get("external/qwk")),
             "external_auroc_referable": _number(metrics.get("external/auroc_referable")),
             "external_root": metrics.get("external/root")}
    if facts["external_root"] is None and not math.isnan(facts["external_qwk"]):
        facts["external_root"] = _config_root(job_dir / ".hydra" / "config.yaml")
    return facts


def _config_root(path: Path) -> str | None:
    """``test_data.root`` of a saved (unresolved) job config: resolved where it can be without the live run
    (a ``${paths.data_dir}/...`` of the built-in set), else its text."""
    try:
        cfg = OmegaConf.load(path)
    except Exception:  # no config (metrics.json only) or an unreadable one: the set stays unnamed
        return None
    try:
        root = OmegaConf.select(cfg, "test_data.root")
    except Exception:  # an interpolation that needs Hydra's runtime (${hydra:...}, ${oc.env:...} unset)
        root = OmegaConf.to_container(cfg.test_data).get("root")
    return None if root is None else str(root)


def graded(finished: pd.DataFrame) -> bool:
    """Whether any finished job graded an external set."""
    return bool(finished.external_qwk.notna().any())


def add_columns(table: pd.DataFrame, finished: pd.DataFrame) -> pd.DataFrame:
    """``table`` (rows: arm x fraction, ``arm`` as the report names the row) with COLUMNS: the runs that graded
    the external set, MIN / AVG / MAX of their external QWK, the mean of their external referable AUROC (over
    the runs that have one: NaN where the set holds one side of grade >= 2)."""
    done = finished[finished.external_qwk.notna()]
    cells = done.groupby(["arm", "label_fraction"]).agg(
        external_runs=("external_qwk", "size"), external_qwk_min=("external_qwk", "min"),
        external_qwk_avg=("external_qwk", "mean"), external_qwk_max=("external_qwk", "max"),
        external_auroc_referable=("external_auroc_referable", "mean")).reset_index()
    table = table.merge(cells, on=["arm", "label_fraction"], how="left")
    table["external_runs"] = table.external_runs.fillna(0).astype(int)
    return table


def md_columns() -> list[tuple[str, Callable[[Any], str]]]:
    """The report.md columns (header, cell of a table row) beside the test QWK."""
    def qwk(row: Any) -> str:
        if not row.external_runs:
            return "not graded"
        shown = f"{row.external_qwk_avg:.3f} ({row.external_qwk_min:.3f} – {row.external_qwk_max:.3f})"
        return shown + (f" ({row.external_runs}/{row.runs_present} runs)" if row.external_runs < row.runs_present
                        else "")

    def auroc(row: Any) -> str:
        return "n/a" if math.isnan(row.external_auroc_referable) else f"{row.external_auroc_referable:.3f}"

    return [("external QWK AVG (MIN – MAX)", qwk), ("external referable AUROC", auroc)]


def md_lines(finished: pd.DataFrame) -> list[str]:
    """What the external columns are, naming the external set(s); a warning when the jobs graded different
    sets (their columns would average two data sets)."""
    roots = finished[finished.external_qwk.notna()].external_root.fillna("unnamed (no external/root, no config)")
    counts = roots.value_counts()
    named = ", ".join(f"`{root}` ({count} job{'s' * (count != 1)})" for root, count in counts.items())
    lines = [f"**External validation set**: {named}. external QWK: AVG (MIN – MAX) over the runs that graded it "
             "with the model or probe chosen on validation (external/qwk in metrics.json); external referable "
             "AUROC: their mean (external/auroc_referable)."]
    if len(counts) > 1:
        lines.append(f"**WARNING: the jobs graded {len(counts)} different external sets**: the external columns "
                     "average over them; report each set from a sweep of its own.")
    return lines
