"""A weights file read once per job: the tensors the job's early check read (``ssl_dr.training.arms.weights_source``)
are kept, one file at most, and the fine-tune's build of the same unchanged file takes them instead of reading it
again (a ViT-L's file is 1.2 GB). The next read lets go of them, taken or not, so they do not stay in memory."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FileKey = tuple[str, int, int]
"""A file's resolved path, size and modification time (ns): a rewritten file is read again."""


@dataclass
class _Kept:
    key: FileKey | None = None
    state: dict[str, Any] | None = None
    keeping: bool = False


_KEPT = _Kept()


def file_key(path: Path) -> FileKey:
    resolved = path.expanduser().resolve()
    stat = resolved.stat()
    return str(resolved), stat.st_size, stat.st_mtime_ns


@contextmanager
def keeping_reads() -> Iterator[None]:
    """Weights files read inside are kept (the last one) for the next read of the same unchanged file; nothing is
    kept when the block fails (the job ends)."""
    _KEPT.keeping = True
    try:
        yield
    except BaseException:
        _KEPT.key = _KEPT.state = None
        raise
    finally:
        _KEPT.keeping = False


def read_weights(path: Path, read: Callable[[Path], dict[str, Any]]) -> dict[str, Any]:
    """``read(path)``, or the tensors kept for this unchanged file, handed over once. Callers must not change the
    returned mapping or its tensors (a later build may take the same objects)."""
    key = file_key(path)
    state = _KEPT.state if _KEPT.key == key else None
    _KEPT.key = _KEPT.state = None
    if state is None:
        state = read(path)
    if _KEPT.keeping:
        _KEPT.key, _KEPT.state = key, state
    return state
