"""An offline W&B run read back and moved: its ``run-<id>.wandb`` transaction log, record by record, and the
staged-file paths in it pointed at a copy of the run folder, so ``wandb sync`` uploads a run folder copied to
another machine or path (W&B's records name staged files by absolute path: wandb/wandb#3098).

The log is a 7-byte header (``:W&B``, magic ``0xBEE1``, version 0), then LevelDB's log format: 32 KiB blocks of
chunks ``crc32 (4) | length (2) | type (1) | payload``, the CRC (zlib's) over the type byte and the payload; a
record too long for its block is split into first/middle/last chunks; a block's last < 7 bytes are zeros.
Each record is a ``wandb_internal_pb2.Record``. Only artifact file paths are rewritten: the config, the
console output and the summary keep the paths the run really used.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

from ssl_dr.errors import DataError
from ssl_dr.run_contract import write_atomic

HEADER = struct.pack("<4sHB", b":W&B", 0xBEE1, 0)
HEADER_BYTES = len(HEADER)
"""A log no longer than this holds no record (a part killed before W&B wrote to it)."""
BLOCK = 32 * 1024
CHUNK_HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


class OfflineRunError(DataError):
    """An offline W&B run folder that cannot be read or moved (not a W&B log, staged files missing)."""


def read_payloads(path: Path) -> list[bytes]:
    """Every record of the log at ``path`` as its serialized bytes, in order, checksums checked (a torn last record
    is dropped, as W&B's own reader drops it)."""
    data = Path(path).read_bytes()
    if data[:len(HEADER)] != HEADER:
        raise OfflineRunError(f"{path}: not a W&B offline run log (no ':W&B' header)")
    payloads, pending, offset = [], b"", len(HEADER)
    while offset + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - offset % BLOCK
        if left_in_block < CHUNK_HEADER:  # padding at the end of a block
            offset += left_in_block
            continue
        crc, length, kind = struct.unpack("<IHB", data[offset:offset + CHUNK_HEADER])
        if kind == 0 and length == 0:  # zero-filled tail
            break
        payload = data[offset + CHUNK_HEADER:offset + CHUNK_HEADER + length]
        if len(payload) < length:  # torn by a kill mid-write: W&B drops it too
            break
        if zlib.crc32(payload, zlib.crc32(bytes([kind]))) != crc:
            raise OfflineRunError(f"{path}: damaged at byte {offset} (checksum mismatch); this part cannot be synced")
        offset += CHUNK_HEADER + length
        pending = payload if kind in (FULL, FIRST) else pending + payload
        if kind in (FULL, LAST):
            payloads.append(pending)
            pending = b""
    return payloads


def encode(payloads: list[bytes]) -> bytes:
    """The log holding ``payloads``, framed exactly as W&B frames it (``read_payloads``' inverse)."""
    out = bytearray(HEADER)
    for payload in payloads:
        first = True
        while True:
            left_in_block = BLOCK - len(out) % BLOCK
            if left_in_block < CHUNK_HEADER:
                out += bytes(left_in_block)
                continue
            piece, payload = payload[:left_in_block - CHUNK_HEADER], payload[left_in_block - CHUNK_HEADER:]
            kind = (FULL if not payload else FIRST) if first else (LAST if not payload else MIDDLE)
            crc = zlib.crc32(piece, zlib.crc32(bytes([kind])))
            out += struct.pack("<IHB", crc, len(piece), kind) + piece
            first = False
            if not payload:
                break
    return bytes(out)


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    """The log's records, parsed."""
    parsed = []
    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        parsed.append(record)
    return parsed


def log_file(run_dir: Path) -> Path:
    """The ``.wandb`` log of an ``offline-run-*`` folder."""
    logs = sorted(Path(run_dir).glob("run-*.wandb"))
    if len(logs) != 1:
        raise OfflineRunError(f"{run_dir}: expected one run-*.wandb file, found {len(logs)}")
    return logs[0]


def holds_records(run_dir: Path) -> bool:
    """False for a part killed before W&B wrote past the header (``wandb sync`` stops at it)."""
    return log_file(run_dir).stat().st_size > HEADER_BYTES


@dataclass(frozen=True)
class Relocation:
    """What ``relocate`` did to one offline run: the staged paths it pointed at the copy, and those already there."""

    run_dir: Path
    moved: int
    in_place: int


def relocate(run_dir: Path) -> Relocation:
    """Point every staged-file path of ``run_dir``'s artifacts at the same file under this copy's ``wandb/`` folder
    (the run's staging folder) where the copy holds it, so the copy syncs after the original is gone; the log is
    rewritten atomically, and not at all when nothing changes. A path the copy lacks stays as it is if it exists
    (a ``WANDB_DATA_DIR`` of the user's), and is otherwise one error naming it."""
    path = log_file(run_dir)
    payloads = read_payloads(path)
    wandb_dir = Path(run_dir).resolve().parent
    counts = {"moved": 0, "in place": 0, "missing": 0}
    missing: list[str] = []
    for index, payload in enumerate(payloads):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        if record.WhichOneof("record_type") != "artifact":
            continue
        manifest = record.artifact.manifest
        outcomes = [_point_at_copy(entry, "local_path", wandb_dir) for entry in manifest.contents]
        outcomes.append(_point_at_copy(manifest, "manifest_file_path", wandb_dir))
        for outcome, old in filter(None, outcomes):
            counts[outcome] += 1
            missing += [old] if outcome == "missing" else []
        if any(o and o[0] == "moved" for o in outcomes):
            payloads[index] = record.SerializeToString()
    if missing:
        raise OfflineRunError(f"{run_dir}: {len(missing)} file(s) W&B staged for this run are neither where it staged "
                              f"them nor under {wandb_dir} (first: {missing[0]}); copy the run folder whole, with its "
                              "wandb/ folder (and the folder WANDB_DATA_DIR named, if you had set it)")
    if counts["moved"]:
        write_atomic(path, lambda tmp: tmp.write_bytes(encode(payloads)))
    return Relocation(Path(run_dir), counts["moved"], counts["in place"])


def _point_at_copy(holder: Any, field: str, wandb_dir: Path) -> tuple[str, str] | None:
    """Set ``holder.field`` (a staged file's path) to the copy's file; what happened and the old path, or None
    where the field is empty."""
    old = getattr(holder, field)
    if not old:
        return None
    new = _in_copy(Path(old), wandb_dir)
    if new is not None and str(new) != old:
        setattr(holder, field, str(new))
        return "moved", old
    return ("in place" if Path(old).exists() else "missing"), old


def _in_copy(old: Path, wandb_dir: Path) -> Path | None:
    """``old``'s file in this copy: the part of its path after a ``wandb`` folder, under ``wandb_dir``."""
    parts = old.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "wandb" and (candidate := wandb_dir.joinpath(*parts[index + 1:])).is_file():
            return candidate
    return None
