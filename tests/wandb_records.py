"""Read an offline W&B run's ``run-<id>.wandb`` file back, without a server or the ``wandb`` reader (wandb
0.31 ships none): the tests check what a run really wrote, not a mock.

The file is W&B's transaction log: a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0), then LevelDB's
log format: 32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | payload``, where type 1
is a whole record and 2/3/4 the first/middle/last piece of one split across blocks; a block's last < 7
bytes are padding. Each record is a ``wandb_internal_pb2.Record`` protobuf.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    assert data[:len(HEADER)] == HEADER, f"{path} is not a W&B transaction log"
    out, pending, offset = [], b"", len(HEADER)
    while offset + 7 <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < 7:  # padding at the end of a block
            offset += left_in_block
            continue
        _, length, kind = struct.unpack("<IHB", data[offset:offset + 7])
        payload = data[offset + 7:offset + 7 + length]
        offset += 7 + length
        if kind == 0 and length == 0:  # zero-filled tail of the file
            break
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
            pending = b""
    return out


def run_file(run_dir: Path) -> Path:
    """The ``.wandb`` file of an ``offline-run-*`` folder."""
    (path,) = Path(run_dir).glob("run-*.wandb")
    return path


def history(run_dir: Path) -> list[dict[str, Any]]:
    """Every ``log`` call's row: key -> decoded JSON value."""
    return [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
            for r in records(run_file(run_dir)) if r.WhichOneof("record_type") == "history"]


def summary(run_dir: Path) -> dict[str, Any]:
    """The run's final summary as the server would hold it (the last summary record wins, key by key)."""
    out: dict[str, Any] = {}
    for r in records(run_file(run_dir)):
        if r.WhichOneof("record_type") == "summary":
            for item in r.summary.update:
                out[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return out


def metric_definitions(run_dir: Path) -> dict[str, Any]:
    """``define_metric`` calls: name (or glob, ``val/*``) -> the MetricRecord (``summary``, ``step_metric``...)."""
    return {r.metric.name or r.metric.glob_name: r.metric for r in records(run_file(run_dir))
            if r.WhichOneof("record_type") == "metric"}


def artifacts(run_dir: Path) -> list[Any]:
    """Every ``log_artifact`` of the run (``ArtifactRecord``: name, type, aliases, metadata, manifest)."""
    return [r.artifact for r in records(run_file(run_dir)) if r.WhichOneof("record_type") == "artifact"]


def table(run_dir: Path, key: str) -> tuple[dict[str, Any], dict[str, Path]]:
    """A ``wandb.Table`` logged under ``key``: its JSON (``columns``, ``data``) and the local file of every entry
    of the ``run_table`` artifact W&B stores it in (images by their ``media/images/...`` path). An offline run
    keeps those files in W&B's staging folder (``$WANDB_DATA_DIR/artifacts/staging``) until ``wandb sync``."""
    for artifact in artifacts(run_dir):
        files = {entry.path: Path(entry.local_path) for entry in artifact.manifest.contents}
        if artifact.type == "run_table" and f"{key}.table.json" in files:
            return json.loads(files[f"{key}.table.json"].read_text()), files
    raise AssertionError(f"no table {key!r} in {run_dir}")


def history_media(run_dir: Path) -> list[Path]:
    """The file of every picture or table a ``log`` call logged (``<key>/path``, under the run's ``files/``)."""
    return [Path(run_dir) / "files" / value for row in history(run_dir) for key, value in row.items()
            if key.endswith("/path") and isinstance(value, str)]


def artifact_files(run_dir: Path) -> list[Path]:
    """The local file of every entry of every artifact the run logged (tables' JSON and images, weights), and
    each manifest written to a file: absolute paths where the run staged them, which ``wandb sync`` uploads."""
    files = []
    for artifact in artifacts(run_dir):
        files += [Path(entry.local_path) for entry in artifact.manifest.contents if entry.local_path]
        if artifact.manifest.manifest_file_path:
            files.append(Path(artifact.manifest.manifest_file_path))
    return files


def run_id(run_dir: Path) -> str | None:
    """The run id in the run's first ``run`` record (W&B also ends the folder's name with it); None where the file
    holds no such record (a process killed before W&B wrote past the header)."""
    return next((r.run.run_id for r in records(run_file(run_dir)) if r.WhichOneof("record_type") == "run"), None)
