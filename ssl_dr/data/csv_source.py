"""One reader for every "CSV + folder of images" dataset: APTOS 2019, EyePACS 2015, clinic exports.

The datasets differ only in file and column names (``train.csv``/``id_code``/``diagnosis`` for APTOS,
``trainLabels.csv``/``image``/``level`` for EyePACS, anything for a clinic), so those are config
(``conf/data/{aptos,eyepacs,csv}.yaml``) and the code is one class. Extra unlabelled images (APTOS
``test.csv`` + ``test_images/``, or whole folders) join the pretext pool only.

Problems are collected and raised together as one ``DataError`` naming the file, row and fix, so a user
repairs their folder in one pass instead of meeting one crash per epoch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from ssl_dr.data.listing import find_image, folder_images
from ssl_dr.data.records import NUM_GRADES, Record, bulleted, duplicate_ids
from ssl_dr.errors import DataError

log = logging.getLogger(__name__)

MAX_LISTED = 10
MAX_WARNED = 5
# patient cells that mean "unknown" (read as text, so pandas' NaN arrives as these strings)
MISSING_CELLS = frozenset({"", "nan", "na", "n/a", "null", "none", "<na>"})


class CsvSource:
    """Records from ``root/csv`` (id, grade and optional patient columns) + ``root/image_dir``.

    ``group_column`` names a patient column; ``group_pattern`` (a regex whose first group is the
    patient) derives it from the id instead, e.g. ``^(.+)_(?:left|right)$`` for EyePACS. An empty
    patient cell (blank, whitespace, or a missing-value marker such as ``NaN``/``NA``/``null``) makes that
    image its own patient (``group=None``) and prints one warning with the count and the first rows:
    merging all such rows into one "patient" would pull unrelated images into one fold, and refusing
    the whole export would block a user who cannot recover a few ids. The price, named in the warning:
    the eyes of a patient whose cells are empty may land in different roles.
    ``unlabelled_tables``: ``[{csv, image_dir, required}]`` whose ids join the pool without grades;
    ``unlabelled_dirs``: folders whose every image joins the pool.
    """

    def __init__(self, root: str | Path, csv: str = "train.csv", image_dir: str = "train_images",
                 id_column: str = "id_code", label_column: str = "diagnosis", group_column: str | None = None,
                 group_pattern: str | None = None, unlabelled_tables: Sequence[dict] = (),
                 unlabelled_dirs: Sequence[str] = ()) -> None:
        self.root = Path(root).expanduser()
        self.csv, self.image_dir = csv, image_dir
        self.id_column, self.label_column, self.group_column = id_column, label_column, group_column
        self.group_pattern = re.compile(group_pattern) if group_pattern else None
        self.unlabelled_tables = [dict(t) for t in unlabelled_tables]
        self.unlabelled_dirs = list(unlabelled_dirs)

    def prepare(self) -> None:
        """Nothing to write for a user folder; sources that generate data override this."""

    def load(self) -> list[Record]:
        """Read and validate every record (labelled first, then unlabelled)."""
        if not self.root.is_dir():
            raise DataError(f"data folder {self.root} does not exist: set data.root to the folder holding "
                            f"{self.csv}")
        records = self._labelled()
        for table in self.unlabelled_tables:
            csv_path = self.root / table["csv"]
            if csv_path.is_file() or table.get("required", False):
                records += self._table(csv_path, self.root / table["image_dir"], table.get("id_column", "id_code"),
                                       None, None)
        for folder in self.unlabelled_dirs:
            if not (self.root / folder).is_dir():
                raise DataError(f"unlabelled image folder {self.root / folder} not found (data.source.unlabelled_dirs)")
            records += folder_images(self.root / folder)
        if duplicates := duplicate_ids([r.id_code for r in records]):
            raise DataError(f"duplicate id(s) in {self.root}: {duplicates[:MAX_LISTED]}; each image must be listed "
                            "once across the labelled and unlabelled tables/folders")
        return records

    def _labelled(self) -> list[Record]:
        return self._table(self.root / self.csv, self.root / self.image_dir, self.id_column, self.label_column,
                           self.group_column)

    def _table(self, csv_path: Path, image_dir: Path, id_column: str, label_column: str | None,
               group_column: str | None) -> list[Record]:
        table = _read_csv(csv_path, [c for c in (id_column, label_column, group_column) if c])
        if not image_dir.is_dir():
            raise DataError(f"image folder {image_dir} not found (listed by {csv_path.name}); "
                            "set data.source.image_dir")
        problems: list[str] = []
        no_patient: list[str] = []
        records = []
        for row_number, row in enumerate(table.to_dict("records"), start=2):
            id_code = str(row[id_column]).strip()
            grade = _parse_grade(row[label_column], row_number, label_column, problems) if label_column else None
            path = _image_path(image_dir, id_code, row_number, problems)
            if path is None or (label_column and grade is None):
                continue
            group = _patient(row[group_column]) if group_column else self._group_from_id(id_code)
            if group_column and group is None:
                no_patient.append(f"{row_number} ({id_code})")
            records.append(Record(id_code=id_code, path=path, grade=grade, group=group))
        _raise_if(problems, f"in {csv_path}")
        _warn_no_patient(no_patient, csv_path, group_column)
        return records

    def _group_from_id(self, id_code: str) -> str | None:
        if self.group_pattern is None:
            return None
        match = self.group_pattern.match(id_code)
        return match.group(1) if match else id_code


def _patient(value: object) -> str | None:
    """The patient id in a cell, or ``None`` when the cell is empty or a missing-value marker."""
    text = str(value).strip()
    return None if text.lower() in MISSING_CELLS else text


def _warn_no_patient(rows: list[str], csv_path: Path, column: str | None) -> None:
    if rows:
        more = f" and {len(rows) - MAX_WARNED} more" if len(rows) > MAX_WARNED else ""
        log.warning(f"{len(rows)} row(s) of {csv_path.name} have an empty {column} cell (rows "
                    f"{', '.join(rows[:MAX_WARNED])}{more}); each is its own patient: fill the cells to keep a "
                    "patient's images together")


def _read_csv(csv_path: Path, columns: list[str]) -> pd.DataFrame:
    if not csv_path.is_file():
        raise DataError(f"{csv_path} not found: expected a CSV with column(s) {columns}")
    try:
        table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise DataError(f"{csv_path} is not a readable CSV ({err}); expected columns {columns}") from err
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise DataError(f"{csv_path} lacks column(s) {missing}; it has {list(table.columns)} "
                        "(set the column names in data.source)")
    return table


def _parse_grade(value: str, row_number: int, column: str, problems: list[str]) -> int | None:
    text = str(value).strip()
    # ASCII digits only: "²".isdigit() is True but int("²") fails; "2.0" is not a grade either (say so, do not guess)
    if text.isascii() and text.isdigit() and int(text) < NUM_GRADES:
        return int(text)
    problems.append(f"row {row_number}: {column} {text!r} is not a grade 0-{NUM_GRADES - 1} (fix or remove the row)")
    return None


def _image_path(image_dir: Path, id_code: str, row_number: int, problems: list[str]) -> Path | None:
    if not id_code or Path(id_code).is_absolute() or ".." in Path(id_code).parts or "/" in id_code or \
            "\\" in id_code:
        problems.append(f"row {row_number}: id {id_code!r} must be a plain file name inside {image_dir}")
        return None
    found = find_image(image_dir, id_code)
    if found is None:
        problems.append(f"row {row_number}: no image {image_dir / id_code}.png (or .jpg/.jpeg/.tif/.tiff)")
    return found


def _raise_if(problems: list[str], where: str) -> None:
    if problems:
        raise DataError(f"{len(problems)} problem(s) {where}:\n{bulleted(problems, MAX_LISTED)}")
