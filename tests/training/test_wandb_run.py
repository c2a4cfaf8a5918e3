"""A fine-tune's offline W&B run, read back from its own files (``tests.wandb_records``): the summary holds the tested
checkpoint's ``val/*`` and the whole metrics.json, and the tested checkpoint's confusion matrices are plots."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from ssl_dr.train import train
from ssl_dr.training.wandb_run import SUMMARY_KEY
from tests import wandb_records
from tests.conftest import TINY


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")


def _none_for_nan(value):
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [_none_for_nan(v) for v in value]
    return value


def test_finetune_run_summarises_the_best_qwk_the_result_record_and_confusion_plots(tiny_cfg, wandb_offline):
    overrides = [o for o in TINY if not o.startswith("logger=")]
    out = Path(train(tiny_cfg("experiment=baseline", *overrides, "logger=default",
                              "trainer.val_check_interval=1"))["output_dir"])
    saved = json.loads((out / "metrics.json").read_text())
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    assert run_dir.name.endswith(f"-{saved['wandb/run_id']}")  # the id a sweep's report run lists the job by

    summary = wandb_records.summary(run_dir)
    # every val/* of the summary is the tested checkpoint's (metrics.json's), not the last validation's
    tested = {k: v for k, v in saved.items() if k.startswith("val/") and isinstance(v, int | float)}
    assert len(tested) > 15 and tested["val/qwk"] == pytest.approx(saved["val/qwk_best"], abs=1e-6)
    assert {k: summary[k] for k in tested} == {k: pytest.approx(_none_for_nan(v)) if v == v else None
                                               for k, v in tested.items()}
    # one step number: the validation curves are drawn at the steps done, the tested one at metrics.json's best/step
    assert wandb_records.metric_definitions(run_dir)["val/*"].step_metric == "val/step"
    rows = [row for row in wandb_records.history(run_dir) if "val/qwk" in row]
    assert [row["val/step"] for row in rows] == [float(s) for s in range(1, saved["train/steps"] + 1)]
    assert summary["val/step"] == saved["best/step"] == saved["val/step"]
    best = [row for row in rows if row["val/step"] == saved["best/step"]]
    assert best[0]["val/qwk"] == pytest.approx(saved["val/qwk_best"], abs=1e-6)

    record = summary[SUMMARY_KEY]  # the whole result file, NaN as null (W&B's summary is JSON)
    assert record == {key: _none_for_nan(value) for key, value in saved.items()}
    assert record["test/confusion"] == saved["test/confusion"] and "labels/read" in record

    for stage in ("val", "test"):
        logged = next(row for row in wandb_records.history(run_dir) if f"{stage}/confusion_matrix_table/path" in row)
        table = json.loads((run_dir / "files" / logged[f"{stage}/confusion_matrix_table/path"]).read_text())
        counts = {(row[0], row[1]): row[2] for row in table["data"]}  # (actual, predicted, count)
        names = [f"{g} {n}" for g, n in enumerate(("none", "mild", "moderate", "severe", "proliferative"))]
        matrix = [[counts.get((names[t], names[p]), 0) for p in range(5)] for t in range(5)]
        assert matrix == saved[f"{stage}/confusion"], stage
