"""One image-cache build whatever runs in parallel: processes asking for the same entry (sweep jobs, DDP ranks)
wait for the one building it and reuse its entry; a waiter whose builder gave up builds it itself."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock

from ssl_dr.data.cache import cache_key, lock_file
from tests.data.test_cache import fundus, records_for, write

SIZE = 32
CHILD = f"""
import logging
import sys
from pathlib import Path
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")  # as Hydra's job log does
from ssl_dr.data.cache import build_cache
from ssl_dr.data.records import Record
paths = sorted(Path(sys.argv[1]).glob("*.png"))
cache = build_cache([Record(p.stem, p, 0) for p in paths], sys.argv[2], {SIZE}, False, num_workers=1)
print("entry", cache.path.name, len(cache), flush=True)
"""


def photos(folder: Path, n: int = 12) -> list[Path]:
    folder.mkdir()
    return [write(folder / f"eye{i:02d}.png", fundus(64, 64, (32, 32), 28, seed=i)) for i in range(n)]


def start(images: Path, root: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, str(images), str(root)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def wait_until_waiting(children: list[subprocess.Popen], seen: dict[int, str], deadline_s: float = 300) -> None:
    """Read each child's first stdout line: the lock's waiting message (or, without a lock, its result)."""
    end = time.monotonic() + deadline_s
    for child in children:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, end - time.monotonic()))
        assert ready, f"child {child.pid} printed nothing in {deadline_s} s"
        seen[child.pid] = child.stdout.readline()


def test_two_processes_asking_for_one_cache_build_it_once(tmp_path):
    paths = photos(tmp_path / "images")
    root = tmp_path / "cache"
    root.mkdir()
    key = cache_key(records_for(paths), SIZE, False)
    first_lines: dict[int, str] = {}
    with FileLock(lock_file(root, key)):  # both start while the lock is taken: they must contend
        children = [start(tmp_path / "images", root) for _ in range(2)]
        wait_until_waiting(children, first_lines)
    results = [(first_lines[c.pid],) + c.communicate(timeout=300) for c in children]
    assert all(c.returncode == 0 for c in children), results
    assert all("waiting for another process building the image cache" in first for first, _, _ in results)
    builds = [err.count(f"caching {len(paths)} images") > 0 for _, _, err in results]
    assert sorted(builds) == [False, True], results  # one built (tqdm's bar), the other reused it
    reuser = results[builds.index(False)][1]
    assert "built by another process, reused" in reuser and f"entry {key} {len(paths)}" in reuser
    assert [p.name for p in root.iterdir()] == [key]  # no lock file or temp folder left


def test_a_waiter_builds_when_the_lock_holder_published_nothing(tmp_path):
    paths = photos(tmp_path / "images", n=4)
    root = tmp_path / "cache"
    root.mkdir()
    first_lines: dict[int, str] = {}
    with FileLock(lock_file(root, cache_key(records_for(paths), SIZE, False))):  # a builder that then fails
        child = start(tmp_path / "images", root)
        wait_until_waiting([child], first_lines)
    out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    assert "waiting for another process" in first_lines[child.pid] and "caching 4 images" in err
    assert out.startswith("entry ")
