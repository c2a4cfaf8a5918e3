"""The run contract (``ssl_dr.run_contract``): one job identity for metrics.json, W&B and the report, the one
atomic writer and the one folder renamer."""

from __future__ import annotations

import pytest

from ssl_dr.reporting.jobs import IDENTITY
from ssl_dr.run_contract import FINETUNE, JobIdentity, move_folder_into_place, write_atomic
from tests.conftest import compose_cfg


def test_the_identity_reads_a_composed_config_and_round_trips_through_metrics_json(tmp_path):
    cfg = compose_cfg(tmp_path, ["experiment=rotation", "data.label_fraction=0.1", "data.fold=3", "seed=43",
                                 "data.split_seed=44"])
    identity = JobIdentity.from_config(cfg)
    assert identity == JobIdentity("rotation", 0.1, 3, 43, 44, FINETUNE)
    assert JobIdentity.from_values(identity.record()) == identity
    assert set(identity.record()) == set(IDENTITY)  # the report groups by exactly these keys


def test_names_the_job_for_w_and_b_and_the_report():
    finetune, probe = JobIdentity("rotation", 0.05, 2, 42, 43), JobIdentity("simclr", 1.0, 0, 42, 42, "knn")
    assert finetune.run_name() == "rotation-frac0.05-fold2" and probe.run_name() == "simclr-knn-frac1.0-fold0"
    assert finetune.alias() == "frac0.05-fold2-split43-seed42"
    assert finetune.describe() == "arm=rotation fraction=0.05 fold=2 seed=42 split_seed=43"
    assert probe.describe() == "arm=simclr protocol=knn fraction=1 fold=0 seed=42 split_seed=42"
    assert JobIdentity.from_values({**finetune.record(), "protocol": None}).protocol == FINETUNE  # older jobs


def test_write_atomic_replaces_whole_or_leaves_the_old_file(tmp_path):
    target = tmp_path / "sub" / "metrics.json"
    write_atomic(target, lambda tmp: tmp.write_text("old"))
    assert target.read_text() == "old"

    def half_then_crash(tmp):
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, half_then_crash)
    assert target.read_text() == "old" and [p.name for p in target.parent.iterdir()] == ["metrics.json"]


def _folder(path, content: str):
    path.mkdir(parents=True)
    (path / "data.txt").write_text(content)
    return path


@pytest.mark.parametrize("there", ["nothing", "an empty folder"])
def test_a_finished_folder_is_renamed_into_place(tmp_path, there):
    if there == "an empty folder":
        (tmp_path / "entry").mkdir()
    move_folder_into_place(_folder(tmp_path / ".entry.tmp", "ours"), tmp_path / "entry", lambda: False)
    assert (tmp_path / "entry" / "data.txt").read_text() == "ours" and not (tmp_path / ".entry.tmp").exists()


@pytest.mark.parametrize("complete,kept", [(True, "theirs"), (False, "ours")])
def test_a_lost_race_keeps_a_complete_winner_and_replaces_a_damaged_one(tmp_path, complete, kept):
    final = _folder(tmp_path / "entry", "theirs")  # another process renamed its folder first
    move_folder_into_place(_folder(tmp_path / ".entry.tmp", "ours"), final, lambda: complete)
    assert (final / "data.txt").read_text() == kept


def test_a_failed_rename_that_is_no_race_is_raised(tmp_path):
    with pytest.raises(FileNotFoundError):
        move_folder_into_place(tmp_path / "never-built", tmp_path / "entry", lambda: True)
    assert not (tmp_path / "entry").exists()
