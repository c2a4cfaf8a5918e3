"""Which W&B run a phase writes to, and what its folder holds (issue 32): a run folder moved elsewhere still holds
every file its offline records name, and ``ssl_dr.wandb_sync`` points the records there; a killed and resumed
fine-tune keeps one run id; an artifact is named only where it was logged; a grader's alias tells partitions
apart."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from wandb import errors as wandb_errors

from ssl_dr import wandb_sync
from ssl_dr.run_contract import JobIdentity
from ssl_dr.train import train
from ssl_dr.training.loggers import STAGING_VARIABLE, stage_in, unstage
from ssl_dr.training.wandb_publish import finetune_publisher
from tests import wandb_records
from tests.conftest import TINY

WANDB_TINY = [o for o in TINY if not o.startswith("logger=")] + ["logger=default"]
"""The tiny settings with the CSV logger and an offline W&B run."""


@pytest.fixture
def wandb_offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")


def _table_references(table_json: Path) -> list[str]:
    """The ``path`` of every media cell of a logged table (images, Grad-CAM overlays)."""
    rows = json.loads(table_json.read_text())["data"]
    return [cell["path"] for row in rows for cell in row if isinstance(cell, dict) and "path" in cell]


def test_a_moved_run_folder_holds_every_file_its_wandb_records_name(tiny_cfg, wandb_offline, monkeypatch, tmp_path):
    """What ``wandb sync`` uploads (staged tables, their images, artifacts' files) lies in the run's own folder."""
    monkeypatch.delenv(STAGING_VARIABLE, raising=False)  # as in a user's shell: W&B's default would be the home
    out = Path(train(tiny_cfg("experiment=rotation", *WANDB_TINY, "wandb_artifacts=true", "media.predictions=4",
                              "media.grad_cam=2", "media.pretext_grid=2"))["output_dir"])
    assert STAGING_VARIABLE not in os.environ  # given back when the phase closed
    runs = sorted((out / "wandb").glob("offline-run-*"))
    staged = {run.name: wandb_records.artifact_files(run) for run in runs}
    assert len(runs) == 2 and all(staged.values())
    for files in staged.values():
        assert all(path.is_relative_to(out / "wandb") for path in files), files

    moved = tmp_path / "elsewhere" / out.name
    shutil.copytree(out, moved, symlinks=True)
    shutil.rmtree(out)

    tables = 0
    for run in sorted((moved / "wandb").glob("offline-run-*")):
        for path in wandb_records.history_media(run):
            assert path.is_file(), path
        for path in staged[run.name]:
            assert (moved / path.relative_to(out)).is_file(), path
        for artifact in wandb_records.artifacts(run):  # a table's pictures are entries of its own artifact
            entries = {e.path: moved / Path(e.local_path).relative_to(out) for e in artifact.manifest.contents}
            for name, table in ((n, p) for n, p in entries.items() if n.endswith(".table.json")):
                references = _table_references(table)
                assert all(ref in entries for ref in references), (name, references)
                tables += bool(references)
    assert tables == 1  # the predictions table: 4 thumbnails and 2 Grad-CAM overlays

    # the records still name the old path; the sync helper points them at the copy, so `wandb sync` runs from here
    assert wandb_sync.main([str(moved)]) == 0
    for run in sorted((moved / "wandb").glob("offline-run-*")):
        files = wandb_records.artifact_files(run)
        assert len(files) == len(staged[run.name]) and all(p.is_file() and p.is_relative_to(moved) for p in files)


def test_a_wandb_data_dir_the_user_set_wins_and_the_log_says_where(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv(STAGING_VARIABLE, str(tmp_path / "mine"))
    with caplog.at_level(logging.INFO, logger="ssl_dr.training.loggers"):
        stage_in(tmp_path / "run" / "wandb")
    assert os.environ[STAGING_VARIABLE] == str(tmp_path / "mine")
    assert f"{STAGING_VARIABLE}={tmp_path / 'mine'}" in caplog.text and "not in the run folder" in caplog.text
    unstage()
    assert os.environ[STAGING_VARIABLE] == str(tmp_path / "mine")

    monkeypatch.delenv(STAGING_VARIABLE)
    for job in ("0", "1"):  # two jobs of one sweep in one process: each stages in its own folder
        stage_in(tmp_path / job / "wandb")
        assert os.environ[STAGING_VARIABLE] == str((tmp_path / job / "wandb").resolve())
        unstage()
        assert STAGING_VARIABLE not in os.environ


class _Run:
    """A W&B run as the publisher sees it; online, it knows the artifacts in ``known``."""

    def __init__(self, offline: bool, known: tuple[str, ...] = ()) -> None:
        self.offline, self.known, self.summary = offline, known, {}

    def use_artifact(self, name: str) -> None:
        if name not in self.known:
            raise wandb_errors.CommError(f"artifact {name} not found")


@pytest.mark.parametrize(("artifacts", "run", "named"), [
    (False, _Run(offline=True), False),  # the default: no artifact was logged, none is named
    (True, _Run(offline=True), True),  # offline W&B cannot look it up: the pretext logged it with artifacts on
    (True, _Run(offline=False, known=("pretext-rotation:abc",)), True),
    (True, _Run(offline=False), False),  # online and absent: the pretext ran without wandb_artifacts
])
def test_the_pretext_artifact_is_named_only_where_it_was_logged(tiny_cfg, tmp_path, artifacts, run, named):
    cfg = tiny_cfg("experiment=rotation", f"wandb_artifacts={str(artifacts).lower()}")
    module = SimpleNamespace(confusion_matrices={})  # nothing tested, so no pictures: only the summary's references
    publish = finetune_publisher(cfg, module, None, tmp_path, {"pretext/key": "abc"})
    publish(SimpleNamespace(checkpoint_callback=None, callback_metrics={}), [run])
    assert run.summary["pretext/wandb_run_id"] == "pretext-abc"
    assert run.summary.get("pretext/artifact") == ("pretext-rotation:abc" if named else None)


def test_a_grader_alias_tells_two_partitions_of_one_seed_apart():
    assert JobIdentity("rotation", 0.1, 2, 42, 43).alias() == "frac0.1-fold2-split43-seed42"
    assert JobIdentity("rotation", 0.1, 2, 42, 44).alias() != JobIdentity("rotation", 0.1, 2, 42, 43).alias()


def _train(cwd: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "ssl_dr.train", *WANDB_TINY, "experiment=baseline", "trainer.max_steps=8",
            *overrides]


@pytest.mark.e2e
def test_a_killed_and_resumed_fine_tune_continues_its_own_wandb_run(tmp_path, wandb_offline):
    """Offline, W&B cannot append to the killed part's folder: the resumed job goes on under the same run id in a
    second ``offline-run-*`` folder, which ``wandb sync`` uploads after the first as the same run."""
    process = subprocess.Popen(_train(tmp_path), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("outputs/*/runs/*/checkpoints/last.ckpt")):  # killed mid-fine-tune
        assert process.poll() is None, "training ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    resumed = subprocess.run(_train(tmp_path, "resume=last"), cwd=tmp_path, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    (run_dir,) = (tmp_path / "outputs" / "baseline" / "runs").iterdir()
    parts = sorted((run_dir / "wandb").glob("offline-run-*"))
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert len(parts) == 2  # the killed part and the resumed one
    assert {part.name.split("-", 3)[-1] for part in parts} == {saved["wandb/run_id"]}
    # the killed part's file may hold no record at all (W&B had not written past its header when it was killed)
    assert {wandb_records.run_id(part) for part in parts} - {None} == {saved["wandb/run_id"]}
    assert wandb_records.run_id(parts[-1]) == saved["wandb/run_id"]
    log = (run_dir / "train.log").read_text()
    assert f"W&B run {saved['wandb/run_id']} continues in a new offline folder" in log
    killed = parts[0]
    if wandb_records.run_id(killed) is None:  # `wandb sync` would stop at it: the log says to leave it out
        assert f"W&B part(s) {killed.name} of run {saved['wandb/run_id']} hold no record" in log
        assert "upload its parts together" not in log
    else:
        assert f"together: wandb sync {killed} <this part, named when it closes>" in log
