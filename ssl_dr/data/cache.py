"""The image cache: each record list's images decoded, preprocessed (``fundus_preprocess``) and stored once per
(images, preprocessing, size) in one uint8 ``.npy`` array that every later run, fold and DDP rank memory-maps, so
2-10 megapixel photographs are not decoded every epoch.

Entries are content addressed (``cache_key``: the settings and every file's id and bytes), so a stale entry is
never served and a moved copy of the data is reused. Each is built in a temporary sibling folder and renamed into
place when complete; all unreadable files are reported in one ``DataError``. Processes asking for the same entry
build it once: the first holds a file lock beside it, the others wait and open what it published, and a dead
builder's lock goes with its process."""

from __future__ import annotations

import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from numpy.lib.format import open_memmap
from tqdm import tqdm

from ssl_dr.data.decode import decode_preprocessed
from ssl_dr.data.file_hashes import HASHES_DIR, add_contents
from ssl_dr.data.fundus_preprocess import DEFAULT_MASK, MASKS
from ssl_dr.data.records import Record, bulleted, duplicate_ids
from ssl_dr.errors import DataError
from ssl_dr.run_contract import move_folder_into_place

log = logging.getLogger(__name__)

PREPROCESS_VERSION = 2
"""Bump whenever ``fundus_preprocess`` changes its output, so old entries are no longer matched."""
ARRAY_NAME = "images.npy"
INDEX_NAME = "index.json"
CHUNK = 16
"""Images per worker task: small enough for a smooth progress bar, large enough to amortise IPC."""
MAX_LISTED = 20


def cache_key(records: Sequence[Record], size: int, ben_graham: bool, mask: str = DEFAULT_MASK,
              hashes_dir: Path | None = None) -> str:
    """Content address of the preprocessed images: the settings and each image's id and file bytes (SHA-256,
    ``ssl_dr.data.file_hashes``, stored in ``hashes_dir``), so a moved or re-copied data folder keeps its entry."""
    digest = hashlib.sha256(json.dumps({"version": PREPROCESS_VERSION, "size": size, "mask": mask,
                                        "ben_graham": bool(ben_graham)}, sort_keys=True).encode())
    unique = _sorted_unique(records)
    missing = [f"{rec.id_code}: {rec.path.resolve()} (not found)" for rec in unique if not rec.path.is_file()]
    if missing:
        raise DataError(_listing(f"{len(missing)} image file(s) cannot be found", missing,
                                 "restore the files or remove their rows"))
    add_contents(digest, unique, hashes_dir)
    return digest.hexdigest()[:20]


class ImageCache:
    """Read-only view of one complete cache entry: ``(N, size, size, 3)`` uint8 rows, looked up by id.

    The memory map is opened lazily and dropped when pickled, so sending the cache to DataLoader
    workers costs a few bytes and each worker maps the file itself.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        index = json.loads((self.path / INDEX_NAME).read_text())
        self.key: str = index["key"]
        self.size: int = index["size"]
        self.ben_graham: bool = index["ben_graham"]
        self.mask: str = index["mask"]
        self.ids: list[str] = index["ids"]
        self._rows = {id_code: row for row, id_code in enumerate(self.ids)}
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def array(self) -> np.ndarray:
        """All rows, memory-mapped read-only (opened on first use in each process)."""
        if self._array is None:
            self._array = np.load(self.path / ARRAY_NAME, mmap_mode="r")
        return self._array

    def row(self, index: int) -> np.ndarray:
        """Image at row ``index`` (rows are in ``ids`` order), as a writable in-memory copy."""
        return np.array(self.array[index])

    def image(self, id_code: str) -> np.ndarray:
        """Preprocessed image of ``id_code``, ``(size, size, 3)`` uint8."""
        try:
            return self.row(self._rows[id_code])
        except KeyError:
            raise KeyError(f"{id_code!r} is not in the image cache {self.path}") from None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_array": None}


def build_cache(records: Sequence[Record], cache_root: str | Path, size: int, ben_graham: bool,
                num_workers: int | None = None, mask: str = DEFAULT_MASK) -> ImageCache:
    """Open the cache entry of these records and settings, building it first when there is none.

    A build decodes every image with ``read_rgb``, runs ``preprocess`` and writes the rows in ``id_code``
    order, in ``num_workers`` processes (default: all CPUs; 0 or 1: in this process). Unreadable files
    are all reported together in one ``DataError``; nothing is published then. An unknown ``mask``
    (``data.preprocess.mask``) is a ``DataError`` before any image is read.
    """
    if mask not in MASKS:
        raise DataError(f"data.preprocess.mask={mask!r} must be one of {', '.join(MASKS)}")
    root = Path(cache_root).expanduser()
    key = cache_key(records, size, ben_graham, mask, root.parent / HASHES_DIR)
    final = root / key
    if _is_complete(final, key):
        return ImageCache(final)
    root.mkdir(parents=True, exist_ok=True)
    with build_lock(root, key, lambda: _is_complete(final, key), f"the image cache {final}") as building:
        if not building:
            return ImageCache(final)
        workers = (os.cpu_count() or 1) if num_workers is None else num_workers
        with temp_entry(root, key) as tmp:
            _write_entry(tmp, _sorted_unique(records), size, ben_graham, mask, key, workers)
            move_folder_into_place(tmp, final, lambda: _is_complete(final, key))
    return ImageCache(final)


def lock_file(root: str | Path, key: str) -> Path:
    """The file whose lock a process holds while it builds entry ``key`` under ``root``."""
    return Path(root).expanduser() / f".{key}.lock"


@contextmanager
def build_lock(root: Path, key: str, is_built: Callable[[], bool], what: str) -> Iterator[bool]:
    """Hold the lock of entry ``key`` under ``root``; yield whether this process must build it (False: another
    one published it while this one waited, ``is_built``). Shared by the content-addressed stores (this image
    cache, ``ssl_dr.probes.store``); ``what`` names the entry in the log. Without it, N sweep jobs started
    together each decode every image (N x the CPU time) and all but one throw their work away. Every holder
    removes the lock file before releasing it, so the root keeps only entries. That is safe because filelock
    (4.3 checked) re-opens a lock file removed while it waited and locks the file at the path again: a third
    process still waits for the second. Were it not, the worst case would be a second build, never a wrong
    entry (``move_folder_into_place`` keeps whichever is complete)."""
    lock = FileLock(lock_file(root, key))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("waiting for another process building %s (lock %s)", what, lock.lock_file)
        lock.acquire()
    try:
        building = not is_built()
        if not building:
            log.info("%s: built by another process, reused", what)
        yield building
    finally:
        Path(lock.lock_file).unlink(missing_ok=True)
        lock.release()


def _sorted_unique(records: Sequence[Record]) -> list[Record]:
    duplicates = duplicate_ids([r.id_code for r in records])
    if duplicates:
        raise DataError(_listing(f"{len(duplicates)} duplicate id_code(s)", duplicates,
                                 "each image must be listed once"))
    return sorted(records, key=lambda r: r.id_code)


def _listing(title: str, items: Sequence[str], fix: str) -> str:
    return f"{title}:\n{bulleted(items, MAX_LISTED)}\n{fix}"


def _is_complete(entry: Path, key: str) -> bool:
    """An entry is trusted only with a matching index and an array of the shape that index promises."""
    try:
        index = json.loads((entry / INDEX_NAME).read_text())
        array = np.load(entry / ARRAY_NAME, mmap_mode="r")
    except (OSError, ValueError, EOFError):  # missing, unparsable, or an empty/truncated array file
        return False
    size = index.get("size")
    return (index.get("key") == key and index.get("version") == PREPROCESS_VERSION
            and array.dtype == np.uint8 and array.shape == (len(index.get("ids", ())), size, size, 3))


def _write_entry(folder: Path, records: list[Record], size: int, ben_graham: bool, mask: str, key: str,
                 num_workers: int) -> None:
    """Fill ``folder`` with the array and index; raise one ``DataError`` listing every bad image."""
    array_path = folder / ARRAY_NAME
    open_memmap(array_path, mode="w+", dtype=np.uint8, shape=(len(records), size, size, 3)).flush()
    tasks = [(array_path, start, [r.path for r in records[start:start + CHUNK]], size, ben_graham, mask)
             for start in range(0, len(records), CHUNK)]
    failures = []
    with tqdm(total=len(records), desc=f"caching {len(records)} images at {size} px", unit="img") as bar:
        for done, errors in _run(tasks, num_workers):
            failures += errors
            bar.update(done)
    if failures:
        raise DataError(_listing(f"{len(failures)} image file(s) cannot be read", failures,
                                 "replace or remove these files (or their rows), then run again"))
    index = {"key": key, "version": PREPROCESS_VERSION, "size": size, "ben_graham": bool(ben_graham),
             "mask": mask, "ids": [r.id_code for r in records]}
    (folder / INDEX_NAME).write_text(json.dumps(index))


def _run(tasks: list[tuple], num_workers: int) -> Iterator[tuple[int, list[str]]]:
    """``_fill_rows`` over the tasks, in this process for one worker (no pool start-up), else in a pool."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from (_fill_rows(*task) for task in tasks)
        return
    pool = ProcessPoolExecutor(max_workers=min(num_workers, len(tasks)))
    try:
        yield from (future.result() for future in as_completed([pool.submit(_fill_rows, *t) for t in tasks]))
    finally:
        pool.shutdown(cancel_futures=True)  # a failed or interrupted build stops queued work at once


def _fill_rows(array_path: Path, start: int, paths: list[Path], size: int, ben_graham: bool,
               mask: str) -> tuple[int, list[str]]:
    """Worker: preprocess ``paths`` into rows ``start...`` of the array; return (count, failure messages)."""
    array = np.load(array_path, mmap_mode="r+")
    errors = []
    for row, path in enumerate(paths, start=start):
        try:
            array[row] = decode_preprocessed(path, size, ben_graham, mask)
        except DataError as err:
            errors.append(str(err))
    array.flush()
    return len(paths), errors


@contextmanager
def temp_entry(root: Path, key: str) -> Iterator[Path]:
    """A temporary folder beside the entry to build it in (removed afterwards, whatever happens), to be renamed
    into place with ``ssl_dr.run_contract.move_folder_into_place``; first the temporary folders of builds of ``key``
    killed on this host are deleted."""
    _remove_dead_temps(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(key), dir=root))
    tmp.chmod(0o755)  # mkdtemp makes it private; other users' runs must be able to read the entry
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _temp_prefix(key: str) -> str:
    return f".{key}.tmp-{socket.gethostname()}-{os.getpid()}-"


def _remove_dead_temps(root: Path, key: str) -> None:
    """Delete temp folders of builds killed on this host (their process is gone); others are left alone."""
    host_prefix = f".{key}.tmp-{socket.gethostname()}-"
    for folder in root.glob(f"{glob.escape(host_prefix)}*"):
        pid = folder.name[len(host_prefix):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        pass
    return True
