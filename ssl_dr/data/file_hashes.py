"""SHA-256 of image files, so caches, pretexts and the external-set check are keyed by what the files hold, not by
where they sit or when they were copied: a data folder moved or re-synced keeps its cache entries and pretexts.
The digests of a list of files are stored under ``<cache>/file_hashes``, looked up by the files' paths, sizes and
modification times, so each list is read once."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ssl_dr.data.records import Record
from ssl_dr.run_contract import write_atomic

HASHES_DIR = "file_hashes"
"""The folder of stored digests inside ``paths.cache_dir``."""
READ_CHUNK = 1 << 20


def file_hashes(records: Sequence[Record], hashes_dir: Path | None = None) -> list[str]:
    """SHA-256 of each record's file bytes, in order; stored in ``hashes_dir`` (``None``: computed, not stored) and
    computed again only when a path, size or modification time in the list changed."""
    if hashes_dir is None:
        return [_sha256(rec.path) for rec in records]
    stats = [rec.path.resolve().stat() for rec in records]
    listing = "".join(f"{rec.path.resolve()}\t{s.st_size}\t{s.st_mtime_ns}\n" for rec, s in zip(records, stats,
                                                                                                 strict=True))
    stored = Path(hashes_dir) / f"{hashlib.sha256(listing.encode()).hexdigest()[:20]}.json"
    try:
        digests = json.loads(stored.read_text())
        if isinstance(digests, list) and len(digests) == len(records):
            return digests
    except (OSError, ValueError):
        pass  # not hashed yet (or a damaged file): hash again
    digests = [_sha256(rec.path) for rec in records]
    write_atomic(stored, lambda tmp: tmp.write_text(json.dumps(digests)))  # whole or not at all: parallel jobs race
    return digests


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(READ_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def pool_fingerprint(records: Sequence[Record], hashes_dir: Path | None = None) -> str:
    """Content address of an image pool: ids and file bytes (SHA-256, stored in ``hashes_dir``), never labels:
    whether a stored pretext was trained on exactly this pool, wherever the files sit now. Labels are left out
    on purpose because the pretext never reads them."""
    digest = hashlib.sha256()
    add_contents(digest, sorted(records, key=lambda r: r.id_code), hashes_dir)
    return digest.hexdigest()[:16]


def add_contents(digest: Any, records: Sequence[Record], hashes_dir: Path | None = None) -> None:
    """Feed ``digest`` (a hashlib object) one line per record, in the given order: its id and its file's SHA-256."""
    for rec, content in zip(records, file_hashes(records, hashes_dir), strict=True):
        digest.update(f"{rec.id_code}\t{content}\n".encode())
