"""The dataset on disk: validate the parameters, assign grades, render every image into an APTOS-layout
folder built aside and renamed into place, refuse foreign or mismatched folders, and the CLI ``main``."""

from __future__ import annotations

import argparse
import csv
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np

from ssl_dr.data.records import GRADE_NAMES, NUM_GRADES
from ssl_dr.data.synthetic.anatomy import EYES
from ssl_dr.data.synthetic.rendering import (
    _SEED_TAG,
    _STREAM_GRADES,
    _STREAM_LABELLED,
    _STREAM_UNLABELLED,
    render_fundus,
    render_montage,
)

GRADE_MIX: tuple[float, ...] = (0.49, 0.10, 0.27, 0.05, 0.08)
GENERATOR_VERSION = 1
_ALL_GRADES_FROM = 20  # from this many labelled images on, every grade with weight > 0 is present


def write_synthetic_dataset(
    root: str | Path,
    num_labelled: int = 600,
    num_unlabelled: int = 200,
    image_size: int = 128,
    seed: int = 0,
    grade_mix: Sequence[float] = GRADE_MIX,
) -> Path:
    """Write the APTOS-layout folder at ``root`` once and return ``root``.

    A complete folder whose ``generator.json`` matches the parameters is reused as is; a folder with other
    parameters or incomplete content raises ``ValueError`` (never silently mixed or overwritten). The
    build happens in a hidden temporary sibling that is renamed into place at the end, so an interrupted
    run never leaves a half dataset that a later run would trust; if another process wins the rename
    race, its result is validated and ours discarded.
    """
    params = _params(num_labelled, num_unlabelled, image_size, seed, grade_mix)
    root = Path(root).expanduser()
    if root.exists() and not (root.is_dir() and next(root.iterdir(), None) is None):  # an empty folder is fine
        _check_existing(root, params)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _build(tmp, params)
        try:
            os.replace(tmp, root)  # atomic; also succeeds onto an empty directory (POSIX)
        except OSError:
            if not root.exists():
                raise  # not a lost race: a real error
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
        n, params["grade_mix"], np.random.default_rng([params["seed"], _STREAM_GRADES, stream, _SEED_TAG])
    )


def _build(folder: Path, params: dict) -> None:
    """Render and write everything; ``generator.json`` last, as the completion marker."""
    folder.mkdir()
    counts = {}
    for split, prefix, stream, n in _splits(params):
        grades = _split_grades(params, stream, n)
        ids = [f"{prefix}_{i:05d}" for i in range(n)]
        image_dir = folder / f"{split}_images"
        image_dir.mkdir()
        for i in _progress(range(n), f"synthetic {split} images"):
            rng = np.random.default_rng([params["seed"], stream, i, _SEED_TAG])
            eye = EYES[int(rng.integers(2))]
            _write_png(image_dir / f"{ids[i]}.png", render_fundus(rng, int(grades[i]), params["image_size"], eye))
        with open(folder / f"{split}.csv", "w", newline="") as f:
            writer = csv.writer(f)
            if split == "train":
                writer.writerow(["id_code", "diagnosis"])
                writer.writerows(zip(ids, grades.tolist(), strict=True))
            else:
                writer.writerow(["id_code"])
                writer.writerows([i] for i in ids)
        counts[split] = np.bincount(grades, minlength=NUM_GRADES).tolist()
    _write_png(folder / "montage.png", render_montage(params["seed"], params["image_size"]))
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
    splits = [("train", "syn", _STREAM_LABELLED, params["num_labelled"])]
    if params["num_unlabelled"]:
        splits.append(("test", "synu", _STREAM_UNLABELLED, params["num_unlabelled"]))
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


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def _progress(items: range, desc: str) -> Iterable[int]:
    """A tqdm bar when tqdm is installed (it comes with lightning) and stderr is a terminal."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(items, desc=desc, disable=None, leave=False)


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
