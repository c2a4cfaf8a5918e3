"""Content-addressed store of pretext results, so a sweep over fractions and folds pretrains once.

The key hashes everything that shapes the pretext's weights (its config, the backbone, image size and
augmentation, seeds, and the image pool's fingerprint). Equal key -> same result -> reuse; any change
-> a new entry, never a stale one. Entries are single files written atomically (see ``save_backbone``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

WEIGHTS_NAME = "backbone.pt"
SUMMARY_NAME = "pretext.json"
LOCK_NAME = ".lock"
# checkpoints of a pretext still training (removed once the weights are saved)
PARTIAL_DIR = "partial"


def pretext_key(description: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able description."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def entry_dir(cache_dir: str | Path, key: str) -> Path:
    """Folder holding one pretext result."""
    return Path(cache_dir) / "pretext" / key


def stored_weights(cache_dir: str | Path, key: str) -> Path | None:
    """The weights file of a finished pretext with this key, or ``None``."""
    path = entry_dir(cache_dir, key) / WEIGHTS_NAME
    return path if path.is_file() else None


def write_summary(cache_dir: str | Path, key: str, summary: dict[str, Any]) -> None:
    """Human-readable description + metrics next to the weights (written after them)."""
    path = entry_dir(cache_dir, key) / SUMMARY_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
