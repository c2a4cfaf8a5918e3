"""The sweep's W&B report run, read back from its offline files: the report table, and the QWK-vs-fraction
chart as a native W&B line plot over that table; and the W&B settings users set as in ``wandb.init``."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

from ssl_dr.reporting.sweep_end import _log_to_wandb
from ssl_dr.reporting.writer import write_report
from tests import wandb_records
from tests.conftest import compose_cfg
from tests.test_report import edit_metrics, job_dir, make_sweep


def written(run_dir, timeout: float = 30.0) -> tuple[list[dict], dict]:
    """The report run's chart row(s) and summary as its offline file holds them: W&B's service may still be
    writing the file when ``run.finish()`` has returned (the chart row was missing in about 1 run in 3 on 2
    busy cores), so read until both are there or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        rows = [r for r in wandb_records.history(run_dir) if "report/qwk_vs_fraction_chart_table/path" in r]
        summary = wandb_records.summary(run_dir)
        if (rows and "report/jobs" in summary) or time.monotonic() > deadline:
            return rows, summary
        time.sleep(0.2)


def test_report_run_holds_the_table_and_a_native_line_plot_over_it(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    sweep = make_sweep(tmp_path)
    edit_metrics(job_dir(sweep, "rotation", 0.05, 1), **{"wandb__run_id": "rotation-0123456789ab"})
    files = write_report(sweep)
    _log_to_wandb(files, OmegaConf.create({"project": "ssl_dr", "entity": None, "mode": "offline"}),
                  group="paper-test", save_dir=sweep)
    (run_dir,) = (sweep / "wandb").glob("offline-run-*")
    (row,), summary = written(run_dir)
    chart = json.loads((run_dir / "files" / row["report/qwk_vs_fraction_chart_table/path"]).read_text())
    plotted = pd.DataFrame(chart["data"], columns=chart["columns"])
    expected = pd.read_csv(sweep / "report.csv")
    assert list(plotted.arm) == list(expected.arm)  # one line per arm, x = fraction, y = mean test QWK
    assert plotted.label_fraction.tolist() == pytest.approx(expected.label_fraction.tolist())
    assert plotted.qwk_avg.tolist() == pytest.approx(expected.qwk_avg.tolist())
    assert "report/table/path" in row and "report/qwk_vs_fraction/path" in row  # the table and the PNG stay
    assert summary["report/complete"] is True
    jobs = summary["report/jobs"]  # the runs the table is made of, by their W&B id (None: an older job)
    assert len(jobs) == len(expected) * 3
    (linked,) = [job for job in jobs if job["wandb_run_id"] is not None]
    assert (linked["arm"], linked["label_fraction"], linked["fold"]) == ("rotation", 0.05, 1)
    assert linked["wandb_run_id"] == "rotation-0123456789ab"


def test_wandb_settings_are_wandbs_own_and_default_to_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_cfg(tmp_path, ["logger=default", "logger.wandb.entity=my-lab", "logger.wandb.tags=[a,b]"])
    assert (cfg.logger.wandb.mode, cfg.logger.wandb.entity, list(cfg.logger.wandb.tags)) == ("offline", "my-lab",
                                                                                             ["a", "b"])
    assert compose_cfg(tmp_path, ["logger=default", "logger.wandb.mode=online"]).logger.wandb.mode == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")  # the environment variable W&B users already set wins
    assert compose_cfg(tmp_path, ["logger=default"]).logger.wandb.mode == "disabled"
