"""External validation in the report (ssl_dr.reporting.external): jobs run with test_data= carry external/* in
metrics.json; the table gets the external QWK and referable AUROC per row and report.md names the set."""

from __future__ import annotations

import statistics

import pandas as pd
import pytest

from ssl_dr.reporting.external import COLUMNS
from ssl_dr.reporting.writer import write_report
from tests.reporting.test_protocols import probe_sweep
from tests.test_report import QWK, edit_metrics, job_dir, make_sweep

TABLE = ["arm", "label_fraction", "runs_present", "runs_expected", "repetitions", "qwk_min", "qwk_avg", "qwk_max",
         "qwk_std", "qwk_sd_folds", "qwk_sd_seeds", "auroc_referable", "auroc_runs", "collapsed", "collapse_checked",
         "labels_train", "labels_val", "labels_read", "labels_available", "val_protocol", "train_steps",
         "train_epochs", "best_step"]


def external_qwk(arm: str, fraction: float, fold: int) -> float:
    return QWK[arm, fraction][fold] - 0.1 - 0.01 * fold


def graded_sweep(tmp_path, root: str = "/data/idrid"):
    """The fine-tune sweep of tests/test_report.py, every job graded on an external set (rotation 10 % fold 2:
    not graded, a job run without test_data)."""
    sweep = make_sweep(tmp_path)
    for (arm, fraction), values in QWK.items():
        for fold in range(len(values)):
            if (arm, fraction, fold) != ("rotation", 0.1, 2):
                edit_metrics(job_dir(sweep, arm, fraction, fold), external__qwk=external_qwk(arm, fraction, fold),
                             external__auroc_referable=0.7 + 0.05 * fold, external__root=root)
    return sweep


def test_external_columns_per_row_by_hand(tmp_path):
    files = write_report(graded_sweep(tmp_path))
    table = pd.read_csv(files.csv)
    assert list(table.columns) == TABLE + COLUMNS
    cells = table.set_index(["arm", "label_fraction"])
    for (arm, fraction), values in QWK.items():
        folds = [f for f in range(len(values)) if (arm, fraction, f) != ("rotation", 0.1, 2)]
        external = [external_qwk(arm, fraction, f) for f in folds]
        row = cells.loc[(arm, fraction)]
        assert row.external_runs == len(folds)
        assert (row.external_qwk_min, row.external_qwk_avg, row.external_qwk_max) == (
            pytest.approx(min(external)), pytest.approx(statistics.fmean(external)), pytest.approx(max(external)))
        assert row.external_auroc_referable == pytest.approx(statistics.fmean(0.7 + 0.05 * f for f in folds))
    markdown = files.markdown.read_text()
    assert "| referable AUROC | collapsed | external QWK AVG (MIN – MAX) | external referable AUROC |" in markdown
    values = [external_qwk("rotation", 0.1, f) for f in (0, 1)]
    row = next(line for line in markdown.splitlines() if line.startswith("| rotation | 10% | 3/3 |"))
    assert row.endswith(f"| {statistics.fmean(values):.3f} ({min(values):.3f} – {max(values):.3f}) (2/3 runs) "
                        "| 0.725 |")
    assert "**External validation set**: `/data/idrid` (11 jobs)." in markdown
    assert markdown.index("## Test QWK") < markdown.index("**External validation set**") < markdown.index(
        "## Labels read")
    assert "different external sets" not in markdown


def test_jobs_graded_on_two_sets_are_flagged(tmp_path):
    sweep = graded_sweep(tmp_path)
    edit_metrics(job_dir(sweep, "baseline", 0.05, 0), external__root="/data/aptos")
    markdown = write_report(sweep).markdown.read_text()
    assert "`/data/idrid` (10 jobs), `/data/aptos` (1 job)" in markdown
    assert "**WARNING: the jobs graded 2 different external sets**" in markdown


def test_probe_jobs_name_the_set_from_their_config(tmp_path):
    """A probe's metrics.json has external/qwk but no external/root: the job config's test_data.root names it."""
    from omegaconf import OmegaConf

    sweep = probe_sweep(tmp_path, folds=(0,), seeds=(42,), arms=("baseline", "rotation"))
    for metrics in sweep.glob("*/metrics.json"):
        config = metrics.parent / ".hydra" / "config.yaml"
        cfg = OmegaConf.load(config)
        cfg.test_data = {"root": "${paths.data_dir}/idrid"}
        cfg.paths.data_dir = "/data"
        OmegaConf.save(cfg, config)
        edit_metrics(metrics.parent, external__qwk=0.4, external__auroc_referable=None)
    files = write_report(sweep)
    assert "**External validation set**: `/data/idrid` (8 jobs)." in files.markdown.read_text()
    row = files.table.set_index(["arm", "label_fraction"]).loc[("rotation (linear)", 0.05)]
    assert (row.protocol, row.external_runs, row.external_qwk_avg) == ("linear", 1, pytest.approx(0.4))
    assert pd.isna(row.external_auroc_referable)
    assert "| 0.400 (0.400 – 0.400) | n/a |" in files.markdown.read_text()


def test_no_external_keys_no_external_columns(tmp_path):
    files = write_report(make_sweep(tmp_path))
    assert list(pd.read_csv(files.csv).columns) == TABLE
    markdown = files.markdown.read_text()
    assert "External validation set" not in markdown and "external QWK" not in markdown

