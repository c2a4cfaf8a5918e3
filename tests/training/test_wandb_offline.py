"""W&B's offline log read and written back exactly (issue 32): a copied run's staged-file paths pointed at the copy,
so ``wandb sync`` uploads a run folder moved to another path or machine."""

from __future__ import annotations

import struct

import pytest
from wandb.proto import wandb_internal_pb2

from ssl_dr import wandb_sync
from ssl_dr.training.wandb_offline import BLOCK, HEADER, OfflineRunError, encode, read_payloads, records, relocate


def _artifact_record(*local_paths: str, manifest_file: str = "") -> bytes:
    record = wandb_internal_pb2.Record()
    record.artifact.type = "run_table"
    record.artifact.manifest.manifest_file_path = manifest_file
    for index, local in enumerate(local_paths):
        entry = record.artifact.manifest.contents.add()
        entry.path, entry.local_path = f"media/images/{index}.png", local
    return record.SerializeToString()


def _history_record(text: str) -> bytes:
    record = wandb_internal_pb2.Record()
    record.output_raw.line = text
    return record.SerializeToString()


@pytest.mark.parametrize("sizes", [[10], [BLOCK - len(HEADER) - 7], [BLOCK - len(HEADER) - 9, 5],
                                   [BLOCK - len(HEADER) - 14, 3], [3 * BLOCK + 100, 1, 0, 70_000]])
def test_records_round_trip_through_blocks_splits_and_padding(tmp_path, sizes):
    payloads = [bytes([i % 251 + 1]) * size for i, size in enumerate(sizes)]
    path = tmp_path / "run-x.wandb"
    path.write_bytes(encode(payloads))
    assert read_payloads(path) == payloads


def test_a_damaged_log_or_another_file_is_one_clear_error(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(b"not a wandb log")
    with pytest.raises(OfflineRunError, match="not a W&B offline run log"):
        read_payloads(path)
    data = bytearray(encode([b"abc" * 10]))
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(OfflineRunError, match="checksum mismatch"):
        read_payloads(path)


def test_a_torn_last_record_is_dropped_as_wandb_drops_it(tmp_path):
    path = tmp_path / "run-x.wandb"
    path.write_bytes(encode([b"kept", b"torn" * 100])[:-50])
    assert read_payloads(path) == [b"kept"]


def _offline_run(root, staged: list[str]) -> tuple:
    """A run folder ``root`` as W&B leaves it: staged files in ``wandb/artifacts/staging``, the log naming them."""
    run = root / "wandb" / "offline-run-20261207_000000-abc"
    run.mkdir(parents=True)
    staging = root / "wandb" / "artifacts" / "staging"
    staging.mkdir(parents=True)
    for name in staged:
        (staging / name).write_text(name)
    log = run / "run-abc.wandb"
    log.write_bytes(encode([_history_record(f"trained in {root}"),
                            _artifact_record(*(str(staging / n) for n in staged), manifest_file=str(staging / "m"))]))
    (staging / "m").write_text("manifest")
    return run, log


def test_a_moved_run_points_its_records_at_the_copy_and_keeps_everything_else(tmp_path):
    run, log = _offline_run(tmp_path / "old" / "job", ["a", "b"])
    moved = tmp_path / "new" / "job"
    moved.parent.mkdir()
    (tmp_path / "old" / "job").rename(moved)
    run, log = moved / run.relative_to(tmp_path / "old" / "job"), moved / log.relative_to(tmp_path / "old" / "job")

    done = relocate(run)
    assert (done.moved, done.in_place) == (3, 0)
    history, artifact = records(log)
    assert history.output_raw.line == f"trained in {tmp_path / 'old' / 'job'}"  # what the run said stays as said
    manifest = artifact.artifact.manifest
    paths = [e.local_path for e in manifest.contents] + [manifest.manifest_file_path]
    assert paths == [str(moved.resolve() / "wandb" / "artifacts" / "staging" / n) for n in ("a", "b", "m")]
    before = log.read_bytes()
    assert relocate(run).moved == 0 and log.read_bytes() == before  # a second pass changes nothing


def test_staged_files_missing_from_the_copy_are_named(tmp_path):
    run, _ = _offline_run(tmp_path / "old", ["a"])
    (tmp_path / "old" / "wandb" / "artifacts" / "staging" / "a").unlink()
    with pytest.raises(OfflineRunError, match=r"1 file\(s\) W&B staged .* \(first: .*staging/a\); copy the run folder"):
        relocate(run)


def test_the_command_relocates_every_run_leaves_out_empty_parts_and_prints_the_upload(tmp_path, capsys):
    run, _ = _offline_run(tmp_path / "old", ["a"])
    empty = run.parent / "offline-run-20261207_000001-abc"
    empty.mkdir()
    (empty / "run-abc.wandb").write_bytes(struct.pack("<4sHB", b":W&B", 0xBEE1, 0))
    (tmp_path / "old").rename(tmp_path / "new")
    assert wandb_sync.main([str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    moved_run = tmp_path / "new" / "wandb" / run.name
    assert f"left out (killed before W&B wrote to it): {tmp_path / 'new' / 'wandb' / empty.name}" in out
    assert f"{moved_run}: 2 staged file path(s) pointed at this copy, 0 already in place" in out
    assert out.rstrip().endswith(f"upload with: wandb sync {moved_run}")


def test_the_command_refuses_a_folder_without_offline_runs(tmp_path, capsys):
    assert wandb_sync.main([str(tmp_path)]) == 2
    assert "no wandb/offline-run-* folder under" in capsys.readouterr().err
