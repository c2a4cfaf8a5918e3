"""The input images of an inference tool: listed from a folder or CSV, decoded and preprocessed exactly as
the training cache does (``ssl_dr.data.decode``) into a temporary memory map, unreadable ones named together
or, with ``skip_bad=true``, listed in a side CSV."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.format import open_memmap
from tqdm import tqdm

from ssl_dr.data.decode import decode_preprocessed
from ssl_dr.data.listing import IMAGE_EXTENSIONS, find_image, folder_images
from ssl_dr.data.records import Record, duplicate_ids
from ssl_dr.errors import DataError
from ssl_dr.inference.checkpoint import InferenceSpec
from ssl_dr.inference.errors import InferenceError, first_line

DECODE_CHUNK = 16
"""Images per decoding task: amortises inter-process traffic, keeps the progress bar smooth."""


def list_images(images: Path, image_dir: Path | None = None) -> list[Record]:
    """Unlabelled records: a folder's images sorted by name (id = file stem), or a CSV's ``id_code`` rows in
    order (ids verbatim, as a Kaggle submission must repeat them)."""
    if images.is_dir():
        if image_dir is not None:
            raise InferenceError("image_dir= only applies when images= is a CSV file")
        records = folder_images(images)
        if not records:
            raise InferenceError(f"no {'/'.join(e[1:] for e in IMAGE_EXTENSIONS)} images in {images}")
    elif images.is_file() and images.suffix.lower() == ".csv":
        records = _csv_records(images, image_dir)
    elif images.exists():
        raise InferenceError(f"images={images} must be a folder of images or a .csv file with an id_code column")
    else:
        raise InferenceError(f"images={images} not found")
    if duplicates := duplicate_ids([r.id_code for r in records]):
        raise InferenceError(f"{images}: duplicate id(s) {duplicates[:10]} (one file per id: e.g. a.png and "
                             "a.jpg share the id 'a')")
    return records


def _csv_records(csv_path: Path, image_dir: Path | None) -> list[Record]:
    if image_dir is None:
        image_dir = csv_path.parent / "test_images"
        image_dir = image_dir if image_dir.is_dir() else csv_path.parent
    elif not image_dir.is_dir():
        raise InferenceError(f"image_dir={image_dir} is not a folder")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise InferenceError(f"{csv_path} is not a readable CSV ({first_line(err)})") from None
    if "id_code" not in table.columns:
        raise InferenceError(f"{csv_path} has no id_code column (it has {list(table.columns)})")
    ids = [i.strip() for i in table["id_code"]]
    bad = [f"row {n}: {i!r}" for n, i in enumerate(ids, start=2) if not i or Path(i).name != i or i in (".", "..")]
    if bad:
        raise InferenceError(f"{csv_path}: id_code must be a plain file name, not {', '.join(bad)}")
    if not ids:
        raise InferenceError(f"{csv_path} lists no images")
    return [Record(id_code=i, path=_image_file(image_dir, i), grade=None) for i in ids]  # ids kept verbatim


def _image_file(folder: Path, id_code: str) -> Path:
    """The file of ``id_code``; the bare path when none exists, so decoding reports it as unreadable
    together with the other bad files."""
    return find_image(folder, id_code) or folder / id_code


@dataclass(frozen=True)
class Skipped:
    """An input image that could not be read, and why."""

    id_code: str
    path: Path
    error: str


@dataclass
class Decoded:
    """The readable images, preprocessed: ``pixels[i]`` (``(S, S, 3)`` uint8) belongs to ``records[i]``."""

    records: list[Record]
    pixels: np.ndarray
    skipped: list[Skipped]


def decode_one(path: Path, size: int, ben_graham: bool, mask: str = "none") -> np.ndarray | str:
    """The training pipeline's decoding and preprocessing of one file (the checkpoint's mask too), or why it
    cannot be read (the cache's own message: ``ssl_dr.data.decode``)."""
    try:
        return decode_preprocessed(path, size, ben_graham, mask)
    except DataError as err:
        return str(err)


@contextmanager
def decoded_images(records: Sequence[Record], spec: InferenceSpec, num_workers: int | None = None,
                   skipped_csv: Path | None = None) -> Iterator[Decoded]:
    """Decode every image before anything is predicted.

    Without ``skipped_csv``, any unreadable image stops everything with ONE error naming all of them.
    With it (``skip_bad=true``), they are written there (``id_code,path,error``; header only when none)
    and left out. The pixels live in a temporary memory map, deleted when the context ends.
    """
    size = spec.image_size
    with tempfile.TemporaryDirectory(prefix="ssl_dr-images-") as tmp:
        pixels = open_memmap(Path(tmp) / "images.npy", mode="w+", dtype=np.uint8,
                             shape=(len(records), size, size, 3))
        kept: list[Record] = []
        skipped: list[Skipped] = []
        decode = partial(decode_one, size=size, ben_graham=spec.ben_graham, mask=spec.mask)
        results = _parallel_map(decode, [r.path for r in records], num_workers)
        for rec, result in zip(records, tqdm(results, total=len(records), desc="reading", unit="img"), strict=True):
            if isinstance(result, str):
                skipped.append(Skipped(rec.id_code, rec.path, result))
            else:
                pixels[len(kept)] = result
                kept.append(rec)
        _report_skipped(skipped, len(records), skipped_csv)
        yield Decoded(kept, pixels[:len(kept)], skipped)


def _parallel_map(fn: Callable[[Path], Any], paths: list[Path], num_workers: int | None) -> Iterator[Any]:
    workers = (os.cpu_count() or 1) if num_workers is None else num_workers
    if workers <= 1 or len(paths) < 4 * DECODE_CHUNK:  # a pool's start-up costs more than it saves
        yield from map(fn, paths)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(fn, paths, chunksize=DECODE_CHUNK)


def _report_skipped(skipped: list[Skipped], total: int, skipped_csv: Path | None) -> None:
    if skipped and skipped_csv is None:
        listing = "\n  ".join(s.error for s in skipped)
        raise InferenceError(f"{len(skipped)} of {total} image(s) cannot be read, nothing was predicted:\n  "
                             f"{listing}\nreplace or remove them, or pass skip_bad=true to go on without them")
    if skipped_csv is not None:
        skipped_csv.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame([dataclasses.asdict(s) for s in skipped], columns=["id_code", "path", "error"]).to_csv(
            skipped_csv, index=False)
        if len(skipped) == total:
            raise InferenceError(f"none of the {total} image(s) can be read (listed in {skipped_csv})")


def side_file(out: Path, suffix: str) -> Path:
    """``preds.csv`` -> ``preds<suffix>`` in the same folder (e.g. ``preds.skipped.csv``)."""
    return out.with_name(out.stem + suffix) if out.suffix else out.with_name(out.name + suffix)


# ----------------------------------------------------------------------------- tensors and TTA
