"""The dataset on disk: validate the parameters, assign grades, render every image into an APTOS-layout
folder built aside and renamed into place, refuse foreign or mismatched folders, and the CLI ``main``.

Images are rendered in worker processes (all CPUs by default): each image draws only from its own random
stream (seed, split, index), so the files are byte for byte those of one process, in less wall time.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import secrets
import shutil
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ssl_dr.data.records import GRADE_NAMES, NUM_GRADES
from ssl_dr.data.synthetic.anatomy import EYES
from ssl_dr.data.synthetic.rendering import (
    SEED_TAG,
    STREAM_GRADES,
    STREAM_LABELLED,
    STREAM_UNLABELLED,
    render_fundus,
    render_montage,
)
from ssl_dr.run_contract import move_folder_into_place

GRADE_MIX: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)
GENERATOR_VERSION = 1
_ALL_GRADES_FROM = 20  # from this many labelled images on, every grade with weight > 0 is present
CHUNK = 25
"""Images per worker task: enough to amortise the hand-over, few enough to share the work and move the bar."""


def write_synthetic_dataset(
    root: str | Path,
    num_labelled: int = 600,
    num_unlabelled: int = 200,
    image_size: int = 128,
    seed: int = 0,
    grade_mix: Sequence[float] = GRADE_MIX,
    num_workers: int | None = None,
) -> Path:
    """Write the APTOS-layout folder at ``root`` once and return ``root``.

    A complete folder whose ``generator.json`` matches the parameters is reused as is; a folder with other
    parameters or incomplete content raises ``ValueError`` (never silently mixed or overwritten). The
    build happens in a hidden temporary sibling that is renamed into place at the end, so an interrupted
    run never leaves a half dataset that a later run would trust; if another process wins the rename
    race, its result is validated and ours discarded. ``num_workers`` processes render the images (default:
    all CPUs; 0 or 1: this process); the files do not depend on it.
    """
    params = _params(num_labelled, num_unlabelled, image_size, seed, grade_mix)
    root = Path(root).expanduser()
    if root.exists() and not (root.is_dir() and next(root.iterdir(), None) is None):  # an empty folder is fine
        _check_existing(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _build(tmp, params, (os.cpu_count() or 1) if num_workers is None else num_workers)
        # a folder another process put there first is kept, never deleted (it may be the user's): checked below
        move_folder_into_place(tmp, root, is_complete=lambda: True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # no-op after a successful rename
    _check_existing(root, params)
    return root


def _params(num_labelled: int, num_unlabelled: int, image_size: int, seed: int, grade_mix: Sequence[float]) -> dict:
    """Validate the arguments; return them as the JSON-comparable record kept in ``generator.json``."""
    for name, value, low in (
        ("num_labelled", num_labelled, 1),
        ("num_unlabelled", num_unlabelled, 0),
        ("image_size", image_size, 32),
        ("seed", seed, 0),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    mix = np.asarray(grade_mix, dtype=float)
    if mix.shape != (NUM_GRADES,) or not np.all(np.isfinite(mix)) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(
            f"grade_mix must be {NUM_GRADES} non-negative numbers with a positive sum (one weight "
            f"per grade 0-{NUM_GRADES - 1}), got {grade_mix!r}"
        )
    return {
        "generator": "ssl_dr.data.synthetic",
        "version": GENERATOR_VERSION,
        "num_labelled": int(num_labelled),
        "num_unlabelled": int(num_unlabelled),
        "image_size": int(image_size),
        "seed": int(seed),
        "grade_mix": [round(float(p), 6) for p in mix / mix.sum()],
    }


def assign_grades(n: int, grade_mix: Sequence[float], rng: np.random.Generator) -> np.ndarray:
    """``n`` grades in random order whose counts follow ``grade_mix`` as closely as integers allow
    (largest remainder), so even small sets have the intended mix. From 20 images on every grade with
    positive weight appears at least once."""
    mix = np.asarray(grade_mix, dtype=float) / np.sum(grade_mix)
    exact = mix * n
    counts = np.floor(exact).astype(int)
    counts[np.argsort(counts - exact, kind="stable")[: n - counts.sum()]] += 1
    if n >= _ALL_GRADES_FROM:
        for grade in np.flatnonzero((counts == 0) & (mix > 0)):
            counts[np.argmax(counts)] -= 1
            counts[grade] += 1
    grades = np.repeat(np.arange(NUM_GRADES), counts)
    rng.shuffle(grades)
    return grades


def _split_grades(params: dict, stream: int, n: int) -> np.ndarray:
    return assign_grades(
        n, params["grade_mix"], np.random.default_rng([params["seed"], STREAM_GRADES, stream, SEED_TAG])
    )


def _build(folder: Path, params: dict, num_workers: int) -> None:
    """Render and write everything; ``generator.json`` last, as the completion marker."""
    folder.mkdir()
    counts = {}
    splits = []
    tasks = []
    for split, prefix, stream, n in _splits(params):
        grades = _split_grades(params, stream, n)
        splits.append((split, prefix, grades))
        (folder / f"{split}_images").mkdir()
        tasks += [(_render_images, folder / f"{split}_images", prefix, params["seed"], params["image_size"], stream,
                   start, grades[start:start + CHUNK].tolist()) for start in range(0, n, CHUNK)]
    # the montage (40 renders) first, so that it does not finish alone after the images
    tasks.insert(0, (_write_montage, folder / "montage.png", params["seed"], params["image_size"]))
    with _progress(sum(len(grades) for *_, grades in splits), "synthetic images") as bar:
        for done in _run(tasks, num_workers):
            bar.update(done)
    for split, prefix, grades in splits:
        ids = [f"{prefix}_{i:05d}" for i in range(len(grades))]
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            if split == "train":
                writer.writerow(["id_code", "diagnosis"])
                writer.writerows(zip(ids, grades.tolist(), strict=True))
            else:
                writer.writerow(["id_code"])
                writer.writerows([i] for i in ids)
        counts[split] = np.bincount(grades, minlength=NUM_GRADES).tolist()
    meta = {
        **params,
        "layout": "APTOS 2019: train.csv (id_code,diagnosis) + train_images/; "
        "test.csv (id_code) + test_images/ are unlabelled",
        "labelled_grade_counts": counts["train"],
    }
    (folder / "generator.json").write_text(json.dumps(meta, indent=2) + "\n")


def _check_existing(root: Path, params: dict) -> None:
    """Raise ``ValueError`` unless ``root`` is a complete dataset generated with ``params``."""
    advice = "delete it or choose another root"
    try:
        meta = json.loads((root / "generator.json").read_text())
    except (OSError, ValueError):
        meta = None
    if not isinstance(meta, dict):
        raise ValueError(
            f"{root} exists but is not a complete synthetic dataset (no readable generator.json); {advice}"
        )
    diff = {k: meta.get(k) for k in params if meta.get(k) != params[k]}
    if diff:
        wanted = {k: params[k] for k in diff}
        raise ValueError(f"{root} holds a synthetic dataset generated with {diff}, not {wanted}; {advice}")
    missing = _missing_files(root, params)
    if missing:
        raise ValueError(
            f"{root} is an incomplete synthetic dataset ({len(missing)} missing, e.g. {missing[0]}); {advice}"
        )


def _splits(params: dict) -> list[tuple[str, str, int, int]]:
    """(split, id prefix, random stream, count) of each split written."""
    splits = [("train", "syn", STREAM_LABELLED, params["num_labelled"])]
    if params["num_unlabelled"]:
        splits.append(("test", "synu", STREAM_UNLABELLED, params["num_unlabelled"]))
    return splits


def _missing_files(root: Path, params: dict) -> list[str]:
    splits = _splits(params)
    missing = [name for name in ("montage.png", *(f"{s[0]}.csv" for s in splits)) if not (root / name).is_file()]
    for split, prefix, _, n in splits:
        image_dir = root / f"{split}_images"
        present = set(os.listdir(image_dir)) if image_dir.is_dir() else set()
        names = (f"{prefix}_{i:05d}.png" for i in range(n))
        missing += [f"{image_dir.name}/{name}" for name in names if name not in present]
    return missing


def _run(tasks: list[tuple], num_workers: int) -> Iterator[int]:
    """Each task's ``function(*args)`` (images written), in this process for one worker (no pool start-up), else
    in a pool; yields as they finish."""
    if num_workers <= 1 or len(tasks) <= 1:
        yield from (function(*args) for function, *args in tasks)
        return
    with ProcessPoolExecutor(max_workers=min(num_workers, len(tasks))) as pool:
        try:
            yield from (f.result() for f in as_completed([pool.submit(*task) for task in tasks]))
        finally:
            pool.shutdown(cancel_futures=True)  # a failed or interrupted build stops queued work at once


def _render_images(image_dir: Path, prefix: str, seed: int, size: int, stream: int, start: int,
                   grades: list[int]) -> int:
    """Worker: render and write images ``start...`` of one split, each from its own stream; return the count."""
    for i, grade in enumerate(grades, start=start):
        rng = np.random.default_rng([seed, stream, i, SEED_TAG])
        eye = EYES[int(rng.integers(2))]
        _write_png(image_dir / f"{prefix}_{i:05d}.png", render_fundus(rng, grade, size, eye))
    return len(grades)


def _write_montage(path: Path, seed: int, size: int) -> int:
    _write_png(path, render_montage(seed, size))
    return 0


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _progress(total: int, desc: str) -> Any:
    """A tqdm bar when tqdm is installed (it comes with lightning) and stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return contextlib.nullcontext(_NoBar())
    return tqdm(total=total, desc=desc, disable=None, leave=False)


class _NoBar:
    def update(self, n: int) -> None:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ssl_dr.data.synthetic --root DIR``: write (or reuse) a synthetic dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m ssl_dr.data.synthetic",
        description="Deterministic synthetic fundus photographs: the project's built-in diabetic-retinopathy dataset.",
    )
    parser.add_argument("--root", required=True, help="output folder (APTOS 2019 layout)")
    parser.add_argument("--num-labelled", type=int, default=600)
    parser.add_argument("--num-unlabelled", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        root = write_synthetic_dataset(args.root, args.num_labelled, args.num_unlabelled, args.image_size, args.seed)
    except ValueError as err:
        parser.error(str(err))
    counts = json.loads((root / "generator.json").read_text())["labelled_grade_counts"]
    print(
        f"synthetic dataset at {root}: {args.num_labelled} labelled + {args.num_unlabelled} unlabelled "
        f"{args.image_size}px images"
    )
    print("labelled grade counts: " + ", ".join(f"{g} ({GRADE_NAMES[g]}): {c}" for g, c in enumerate(counts)))
    return 0
