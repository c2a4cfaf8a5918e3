"""Content-addressed store of frozen features: one float32 row per image, computed once per key and reused by every
later job (a sweep over fractions, folds and repetitions extracts each image once).

An entry ``<cache_dir>/features/<key>/`` holds ``features.npy`` (N, D) float32, ``ids.txt`` (the rows' image ids)
and ``features.json`` (the description the key hashes, for a reader). It is built in a temporary sibling and
renamed into place when complete, under a file lock beside it, with the image cache's own mechanism
(``ssl_dr.data.cache``: ``build_lock``, ``temp_entry``; ``ssl_dr.run_contract.move_folder_into_place``):
jobs asking for the same entry at once compute it once, and a killed build never leaves an entry a later job trusts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ssl_dr.data.cache import build_lock, temp_entry
from ssl_dr.data.records import Record
from ssl_dr.run_contract import move_folder_into_place

log = logging.getLogger(__name__)

FEATURES_VERSION = 1
"""Bump when an extractor changes its output for the same description, so old entries are no longer matched."""
ARRAY_NAME = "features.npy"
IDS_NAME = "ids.txt"
META_NAME = "features.json"


def feature_key(description: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able description of what shapes the features."""
    blob = json.dumps({"version": FEATURES_VERSION, **description}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class FeatureSet:
    """One complete entry: ``features`` (N, D) float32, memory-mapped read-only, rows in ``ids`` order."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.key = self.path.name
        self.ids: list[str] = (self.path / IDS_NAME).read_text().splitlines()
        self.features: np.ndarray = np.load(self.path / ARRAY_NAME, mmap_mode="r")
        self._rows = {id_code: row for row, id_code in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, records: Sequence[Record] | Sequence[str]) -> np.ndarray:
        """Features of these records (or ids), in their order, as an in-memory float32 ``(len, D)`` array."""
        ids = [r.id_code if isinstance(r, Record) else r for r in records]
        missing = [i for i in ids if i not in self._rows]
        if missing:
            raise KeyError(f"{len(missing)} image(s) have no features in {self.path} (e.g. {missing[:3]}); the "
                           "entry covers the image cache it was extracted from: extract from that cache")
        rows = self.features[[self._rows[i] for i in ids]]
        return np.asarray(rows, dtype=np.float32).reshape(len(ids), self.features.shape[1])  # (0, D) when empty


def stored_features(cache_dir: str | Path, description: dict[str, Any],
                    compute: Callable[[], tuple[list[str], np.ndarray]]) -> FeatureSet:
    """Open the entry of ``description``, or run ``compute`` (-> ids, (N, D) features) once and publish it."""
    key = feature_key(description)
    root = Path(cache_dir).expanduser() / "features"
    final = root / key
    if _is_complete(final):
        log.info("features %s: reused (%s)", key, final)
        return FeatureSet(final)
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root, key, lambda: _is_complete(final), f"features {key}") as building:
        if building:
            ids, features = compute()
            with temp_entry(root, key) as tmp:
                _write(tmp, key, description, ids, features)
                move_folder_into_place(tmp, final, lambda: _is_complete(final))
    return FeatureSet(final)


def _write(folder: Path, key: str, description: dict[str, Any], ids: list[str], features: np.ndarray) -> None:
    features = np.asarray(features, dtype=np.float32)
    if features.ndim != 2 or len(features) != len(ids):
        raise ValueError(f"features of shape {features.shape} for {len(ids)} ids: expected ({len(ids)}, D)")
    np.save(folder / ARRAY_NAME, features)
    (folder / IDS_NAME).write_text("".join(f"{i}\n" for i in ids))
    meta = {"key": key, "version": FEATURES_VERSION, "shape": list(features.shape), **description}
    (folder / META_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True, default=str))


def _is_complete(entry: Path) -> bool:
    """Trusted only with its description and an array with one float32 row per listed id."""
    try:
        meta = json.loads((entry / META_NAME).read_text())
        ids = (entry / IDS_NAME).read_text().splitlines()
        array = np.load(entry / ARRAY_NAME, mmap_mode="r")
    except (OSError, ValueError, EOFError):
        return False
    return (meta.get("key") == entry.name and meta.get("version") == FEATURES_VERSION
            and array.dtype == np.float32 and array.ndim == 2 and array.shape[0] == len(ids))
