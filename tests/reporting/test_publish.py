"""``python -m ssl_dr.report <sweep> --publish results/<name>`` (ssl_dr.reporting.publish): the copy holds only the
per-job records, and the report re-derived from it is the sweep's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ssl_dr.report import main
from ssl_dr.reporting.publish import publish
from ssl_dr.reporting.writer import write_report
from tests.reporting.test_environments import HERE
from tests.test_report import edit_metrics, job_dir, make_sweep

JOB_RECORDS = {"metrics.json", "environment.json", ".hydra/config.yaml", ".hydra/overrides.yaml",
               "test_predictions.csv", "train.log"}
LEFT_OUT = {"external_predictions.csv"}  # one row per external image in every job: its figures are in metrics.json
REPORT_FILES = {"report.md", "report.csv", "report_paired.csv", "qwk_vs_fraction.png"}


def full_sweep(tmp_path: Path) -> Path:
    """A sweep folder as a real one is left: besides the records, checkpoints, pretext weights, W&B folders,
    image outputs and Hydra's own hydra.yaml; one job crashed (its log says so), one graded an external set."""
    sweep = make_sweep(tmp_path, preds=[0, 1, 2, 3, 4, 2])
    for job in sorted(sweep.glob("*/metrics.json")):
        job = job.parent
        (job / "environment.json").write_text(json.dumps(HERE))
        (job / "train.log").write_text("[INFO] - tested the checkpoint of step 120\n")
        (job / "external_predictions.csv").write_text("id_code,grade,pred\nx,0,0\n")
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "best.ckpt").write_bytes(b"\0" * 64)
        (job / "pretext").mkdir()
        (job / "pretext" / "backbone.pt").write_bytes(b"\0" * 64)
        (job / "wandb" / "offline-run-1" / "files" / "media" / "images").mkdir(parents=True)
        (job / "wandb" / "offline-run-1" / "files" / "media" / "images" / "batch.png").write_bytes(b"\x89PNG")
        (job / "explain").mkdir()
        (job / "explain" / "gradcam_img0.png").write_bytes(b"\x89PNG")
        (job / ".hydra" / "hydra.yaml").write_text("hydra:\n  runtime:\n    cwd: /home/someone\n")
    edit_metrics(job_dir(sweep, "rotation", 0.1, 0), external__qwk=0.3, external__root="/data/idrid")
    crashed = job_dir(sweep, "baseline", 0.05, 2)
    (crashed / "metrics.json").unlink()
    (crashed / "train.log").write_text("[INFO] - epoch 1\n[ERROR] - job failed: RuntimeError: CUDA out of memory\n")
    (sweep / "wandb" / "offline-run-report").mkdir(parents=True)
    write_report(sweep)
    return sweep


def test_the_copy_holds_only_the_records_and_re_derives_the_report(tmp_path, capsys):
    sweep = full_sweep(tmp_path / "outputs")
    dest = tmp_path / "results" / "paper_cpu"
    assert main([str(sweep), "--publish", str(dest)]) == 1  # incomplete: the crashed job, as in the sweep
    out = capsys.readouterr().out
    assert f"into {dest}" in out and "FAILED: arm=baseline fraction=0.05 fold=2" in out
    copied = {str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file()}
    jobs = {p.name for p in sweep.iterdir() if (p / ".hydra").is_dir()}
    expected = {f"{job}/{name}" for job in jobs for name in JOB_RECORDS if (sweep / job / name).is_file()}
    assert copied == expected | {"multirun.yaml"} | REPORT_FILES
    assert not any(p.suffix in (".ckpt", ".pt") or "wandb" in p.parts or p.name in {"hydra.yaml", *LEFT_OUT}
                   for p in dest.rglob("*"))
    assert [p.name for p in dest.rglob("*.png")] == ["qwk_vs_fraction.png"]  # the report's plot, no image
    for name in ("report.csv", "report_paired.csv"):
        assert (dest / name).read_bytes() == (sweep / name).read_bytes()
    published = (dest / "report.md").read_text()
    header = f"# Sweep report: {dest.name}\n\nSweep folder: `{dest}`"  # the folder's own name and path
    assert published.startswith(header)
    assert published.replace(header, f"# Sweep report: {sweep.name}\n\nSweep folder: `{sweep}`") == \
        (sweep / "report.md").read_text()
    assert "MISSING" not in published and "External validation set**: `/data/idrid` (1 job)" in published
    assert main([str(dest)]) == 1
    assert (dest / "report.md").read_text() == published  # the committed copy reports itself identically


def test_an_unfinished_job_is_unfinished_in_the_copy_too(tmp_path):
    """A job without metrics.json and no error logged stays UNFINISHED, with its log's last line."""
    sweep = make_sweep(tmp_path / "outputs")
    job = job_dir(sweep, "rotation", 0.05, 1)
    (job / "metrics.json").unlink()
    (job / "train.log").write_text("[INFO] - epoch 7 of 15\n")
    publish(sweep, tmp_path / "copy")
    (gap,) = write_report(tmp_path / "copy").gaps
    assert gap.kind == "UNFINISHED" and gap.reason.endswith("its log ends: [INFO] - epoch 7 of 15")


@pytest.mark.parametrize("where", ["non_empty", "inside"])
def test_publish_refuses_a_used_folder_or_one_inside_the_sweep(tmp_path, capsys, where):
    sweep = make_sweep(tmp_path / "outputs")
    dest = tmp_path / "results" / "x" if where == "non_empty" else sweep / "published"
    if where == "non_empty":
        dest.mkdir(parents=True)
        (dest / "notes.md").write_text("mine")
    assert main([str(sweep), "--publish", str(dest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dest}: ") and err.count("\n") == 1
    assert not (dest / "multirun.yaml").exists()
