"""Reader for the Kaggle APTOS 2019 layout, which the built-in synthetic set also uses.

Layout: ``train.csv`` (``id_code,diagnosis``) + ``train_images/<id_code>.png``; when present,
``test.csv`` (``id_code``) + ``test_images/`` join the pool as *unlabelled* images (the pretext may use
them, grading never does). Problems are collected and raised together as one ``DataError`` so a user
fixes their folder in one pass instead of one crash per epoch.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ssl_dr.data.records import NUM_GRADES, DataError, Record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MAX_LISTED = 10


class AptosSource:
    """Records from an APTOS-layout folder (``data=aptos data.root=...``)."""

    def __init__(self, root: str | Path, use_unlabelled: bool = True) -> None:
        self.root = Path(root).expanduser()
        self.use_unlabelled = use_unlabelled

    def prepare(self) -> None:
        """Nothing to write for a user folder; subclasses that generate data override this."""

    def load(self) -> list[Record]:
        """Read and validate every record (labelled first, then unlabelled)."""
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist: set data.source.root to the folder "
                            "holding train.csv and train_images/")
        records = _read_table(self.root / "train.csv", self.root / "train_images", labelled=True)
        test_csv = self.root / "test.csv"
        if self.use_unlabelled and test_csv.is_file():
            records += _read_table(test_csv, self.root / "test_images", labelled=False)
        _check_unique([r.id_code for r in records], self.root)
        return records


def _read_table(csv_path: Path, image_dir: Path, labelled: bool) -> list[Record]:
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found: an APTOS folder needs {csv_path.name} "
                        f"({'id_code,diagnosis' if labelled else 'id_code'})")
    if not image_dir.is_dir():
        raise DataError(f"image folder {image_dir} not found (listed by {csv_path.name})")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path} is not a readable CSV ({err}); expected columns id_code"
                        f"{',diagnosis' if labelled else ''}") from err
    needed = ["id_code", "diagnosis"] if labelled else ["id_code"]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {missing}; it has {list(table.columns)}")
    problems: list[str] = []
    records = []
    for row_number, row in enumerate(table.itertuples(index=False), start=2):
        id_code = str(row.id_code).strip()
        grade = _parse_grade(row.diagnosis, csv_path, row_number, problems) if labelled else None
        path = _image_path(image_dir, id_code, csv_path, row_number, problems)
        if path is not None and (grade is not None or not labelled):
            records.append(Record(id_code=id_code, path=path, grade=grade))
    if problems:
        shown = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in {csv_path}:\n  {shown}{more}")
    return records


def _parse_grade(value: str, csv_path: Path, row_number: int, problems: list[str]) -> int | None:
    text = str(value).strip()
    if text.isdigit() and int(text) < NUM_GRADES:
        return int(text)
    problems.append(f"row {row_number}: diagnosis {text!r} is not a grade 0-{NUM_GRADES - 1} "
                    f"(fix or remove the row in {csv_path.name})")
    return None


def _image_path(image_dir: Path, id_code: str, csv_path: Path, row_number: int,
                problems: list[str]) -> Path | None:
    if not id_code or Path(id_code).is_absolute() or ".." in Path(id_code).parts or "/" in id_code:
        problems.append(f"row {row_number}: id_code {id_code!r} must be a plain file stem inside {image_dir}")
        return None
    for ext in IMAGE_EXTENSIONS:
        candidate = image_dir / f"{id_code}{ext}"
        if candidate.is_file():
            return candidate
    problems.append(f"row {row_number}: no image {image_dir / id_code}.png (or .jpg/.jpeg/.tif/.tiff)")
    return None


def _check_unique(ids: list[str], root: Path) -> None:
    seen: set[str] = set()
    duplicates = sorted({i for i in ids if i in seen or seen.add(i)})
    if duplicates:
        raise DataError(f"duplicate id_code(s) in {root}: {duplicates[:MAX_LISTED]}; each image must be "
                        "listed once across train.csv and test.csv")
