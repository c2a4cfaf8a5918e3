"""Screening figures in the report (ssl_dr.reporting.screening): jobs run with the screening evaluation carry the
operating point, ECE and per-run bootstrap keys in metrics.json; report.md gets a section and report_screening.csv
their means per row x fraction; jobs without them report as before."""

from __future__ import annotations

import json
import math
import statistics

import pandas as pd
import pytest

from ssl_dr.reporting.screening import screening_facts
from ssl_dr.reporting.writer import write_report
from tests.reporting.test_external_report import TABLE, graded_sweep
from tests.reporting.test_protocols import probe_sweep
from tests.test_report import QWK, edit_metrics, job_dir, make_sweep

NAN_JOB = ("rotation", 0.1, 2)
"""Its test fold is one-sided: sensitivity NaN, as the training writes it."""
TEST_COLUMNS = ["arm", "label_fraction", "runs_present", "test_sensitivity", "test_sensitivity_runs",
                "test_specificity", "test_specificity_runs", "test_ece", "test_ece_runs", "test_ece_referable",
                "test_ece_referable_runs", "test_qwk_interval", "test_qwk_interval_runs"]
EXTERNAL_COLUMNS = ["external_sensitivity", "external_sensitivity_runs", "external_specificity",
                    "external_specificity_runs", "external_ece", "external_ece_runs", "external_ece_referable",
                    "external_ece_referable_runs", "external_qwk_interval", "external_qwk_interval_runs"]


def sensitivity(arm: str, fraction: float, fold: int) -> float:
    return math.nan if (arm, fraction, fold) == NAN_JOB else 0.8 + 0.05 * fold + (arm == "rotation") * 0.02


def figures(arm: str, fraction: float, fold: int) -> dict[str, float]:
    """The screening keys of one job's metrics.json (``edit_metrics`` spelling: ``__`` for ``/``)."""
    return {"operating_point__threshold": 0.3, "operating_point__sensitivity_target": 0.9,
            "val__sensitivity_at_operating_point": 0.9, "val__specificity_at_operating_point": 0.7,
            "test__sensitivity_at_operating_point": sensitivity(arm, fraction, fold),
            "test__specificity_at_operating_point": 0.6 + 0.1 * fold, "test__ece": 0.05 * (fold + 1) + fraction,
            "test__ece_referable": 0.02 * fold, "test__qwk_ci_low": 0.1, "test__qwk_ci_high": 0.5,
            "test__auroc_referable_ci_low": 0.6, "test__auroc_referable_ci_high": 0.8,
            "bootstrap__resamples": 1000, "bootstrap__level": 0.95}


def screen(sweep, **more: object):
    """Every job of a make_sweep / graded_sweep sweep gets the screening keys (``more``: the same for every job)."""
    for (arm, fraction), values in QWK.items():
        for fold in range(len(values)):
            edit_metrics(job_dir(sweep, arm, fraction, fold), **figures(arm, fraction, fold), **more)
    return sweep


def test_screening_means_per_row_by_hand(tmp_path):
    files = write_report(screen(make_sweep(tmp_path)))
    assert list(pd.read_csv(files.csv).columns) == TABLE  # the main table keeps its columns
    table = pd.read_csv(files.screening_csv)
    assert files.screening_csv.name == "report_screening.csv" and list(table.columns) == TEST_COLUMNS
    cells = table.set_index(["arm", "label_fraction"])
    for (arm, fraction), values in QWK.items():
        folds = range(len(values))
        defined = [s for f in folds if not math.isnan(s := sensitivity(arm, fraction, f))]
        row = cells.loc[(arm, fraction)]
        assert (row.runs_present, row.test_sensitivity_runs, row.test_specificity_runs) == (3, len(defined), 3)
        assert row.test_sensitivity == pytest.approx(statistics.fmean(defined))
        assert row.test_specificity == pytest.approx(statistics.fmean(0.6 + 0.1 * f for f in folds))
        assert row.test_ece == pytest.approx(statistics.fmean(0.05 * (f + 1) + fraction for f in folds))
        assert row.test_ece_referable == pytest.approx(0.02)
        assert row.test_qwk_interval == pytest.approx(0.4)  # each run's own interval: 0.5 - 0.1
    markdown = files.markdown.read_text()
    assert markdown.count("sensitivity >= 0.9") == 1
    assert "**Operating point: sensitivity >= 0.9 on validation** (evaluation.referable_target)" in markdown
    assert ("| arm | labels | runs | test sensitivity | test specificity | test ECE | test ECE (referable) | width of "
            "one run's test QWK interval |") in markdown
    # rotation 10 %: sensitivity over folds 0 and 1 only, and the count says so
    row = f"| rotation | 10% | 3 | {statistics.fmean([0.82, 0.87]):.3f} (2/3) | 0.700 | 0.200 | 0.020 | 0.400 |"
    assert row in markdown
    assert ("**Per-run intervals**: each job's own interval (95% patient bootstrap, 1000 resamples, both eyes of a "
            "patient together) of its test QWK and referable AUROC is in its metrics.json") in markdown
    assert "not the paired arm-minus-baseline interval" in markdown
    assert markdown.index("## Labels read") < markdown.index("## Screening") < markdown.index("## Paired difference")
    assert "WARNING: the jobs used" not in markdown and "temperature" not in markdown


def test_without_screening_keys_no_section_and_no_stale_csv(tmp_path):
    sweep = screen(make_sweep(tmp_path))
    assert write_report(sweep).screening_csv.is_file()
    for metrics in sweep.glob("*/metrics.json"):  # the same sweep as jobs made before the screening evaluation
        keys = json.loads(metrics.read_text())
        edit_metrics(metrics.parent, **{key.replace("/", "__"): None for key in keys
                                        if key.startswith(("operating_point/", "bootstrap/", "val/sens", "val/spec"))
                                        or key.startswith("test/") and key != "test/qwk"})
    files = write_report(sweep)
    assert files.screening_csv is None and files.screening is None
    assert not (sweep / "report_screening.csv").exists()
    assert "Screening" not in files.markdown.read_text() and "operating point" not in files.markdown.read_text()
    plain = write_report(make_sweep(tmp_path / "plain"))
    assert files.markdown.read_text().replace(str(sweep), "") == plain.markdown.read_text().replace(
        str(plain.markdown.parent), "")


def test_external_set_figures_beside_the_test_fold(tmp_path):
    sweep = screen(graded_sweep(tmp_path), external__sensitivity_at_operating_point=0.7,
                   external__specificity_at_operating_point=0.5, external__ece=0.2, external__ece_referable=0.1)
    edit_metrics(job_dir(sweep, *NAN_JOB), **{f"external__{key}": None for key in (
        "sensitivity_at_operating_point", "specificity_at_operating_point", "ece", "ece_referable")})
    files = write_report(sweep)
    table = pd.read_csv(files.screening_csv)
    assert list(table.columns) == TEST_COLUMNS + EXTERNAL_COLUMNS
    row = table.set_index(["arm", "label_fraction"]).loc[("rotation", 0.1)]
    assert (row.external_sensitivity, row.external_sensitivity_runs, row.external_ece) == (
        pytest.approx(0.7), 2, pytest.approx(0.2))
    markdown = files.markdown.read_text()
    assert "| external sensitivity | external specificity | external ECE | external ECE (referable) |" in markdown
    assert "| 0.700 (2/3) | 0.500 (2/3) | 0.200 (2/3) | 0.100 (2/3) |" in markdown
    assert "read once on the test fold and the external set" in markdown
    assert "the same under external/" in markdown


def test_mixed_targets_warn_and_temperature_is_named(tmp_path):
    sweep = screen(make_sweep(tmp_path))
    edit_metrics(job_dir(sweep, "baseline", 0.05, 0), operating_point__sensitivity_target=None,
                 operating_point__specificity_target=0.8, calibration__temperature=1.7,
                 bootstrap__resamples=None, bootstrap__level=None)
    markdown = write_report(sweep).markdown.read_text()
    assert ("**Operating point: sensitivity >= 0.9 on validation (11 jobs), specificity >= 0.8 on validation "
            "(1 job)**") in markdown
    assert "**WARNING: the jobs used 2 different operating points**" in markdown
    assert "1 of 12 runs fitted a temperature on validation" in markdown
    assert "**Per-run intervals**: 11 of 12 jobs' own interval" in markdown


def test_probe_rows_carry_their_protocol(tmp_path):
    sweep = probe_sweep(tmp_path, folds=(0,), seeds=(42,), arms=("baseline", "rotation"))
    for metrics in sweep.glob("*/metrics.json"):
        edit_metrics(metrics.parent, test__ece=0.1, operating_point__threshold=math.nan)
    files = write_report(sweep)
    row = pd.read_csv(files.screening_csv).set_index(["arm", "label_fraction"]).loc[("rotation (knn)", 0.05)]
    assert (row.protocol, row.test_ece, row.test_sensitivity_runs) == ("knn", pytest.approx(0.1), 0)
    markdown = files.markdown.read_text()
    assert "**Operating point: none** (the jobs ran with evaluation.referable_target=null)" in markdown
    assert "| rotation (knn) | 5% | 1 | n/a | n/a | 0.100 | n/a |" in markdown
    assert "Per-run intervals" not in markdown  # bootstrap.resamples=0: no interval to point at


def test_job_facts_never_fail_on_odd_values():
    facts = screening_facts({"test/ece": "n/a", "test/sensitivity_at_operating_point": None,
                             "operating_point/specificity_target": "high", "bootstrap/resamples": 200})
    assert math.isnan(facts["test_ece"]) and math.isnan(facts["test_sensitivity"])
    assert (facts["screened"], facts["operating_point"], facts["bootstrap"]) == (
        True, "specificity >= high", "patient bootstrap, 200 resamples")
    assert screening_facts(None)["screened"] is False


def test_the_command_names_the_screening_csv_it_wrote(tmp_path, capsys):
    from ssl_dr.report import main

    sweep = screen(make_sweep(tmp_path))
    main([str(sweep)])
    assert str(sweep / "report_screening.csv") in capsys.readouterr().out
