"""Read an offline W&B run's ``run-<id>.wandb`` file back, without a server (wandb 0.31 ships no reader; the
package's own, ``ssl_dr.training.wandb_offline``, parses it): the tests check what a run really wrote, not a mock.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ssl_dr.training.wandb_offline import log_file as run_file
from ssl_dr.training.wandb_offline import records

__all__ = ["records", "run_file", "history", "summary", "metric_definitions", "artifacts", "table", "history_media",
           "artifact_files", "run_id"]


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
