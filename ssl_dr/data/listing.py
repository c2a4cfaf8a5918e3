"""Finding image files on disk: which suffixes count as images, an id's file, a folder's images.

The training reader (``csv_source``) and the inference tools (``inference.images``) list folders the same way,
so an image that trains is an image that predicts; each caller raises its own error when a folder is missing or
empty, because what the user must fix differs (a ``data.*`` setting vs an ``images=`` argument).
"""

from __future__ import annotations

from pathlib import Path

from ssl_dr.data.records import Record

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def find_image(folder: Path, id_code: str) -> Path | None:
    """The file of ``id_code`` in ``folder``: the id itself when it carries an extension, else id + any
    known extension (either case); ``None`` when there is none."""
    names = [id_code] if id_code.lower().endswith(IMAGE_EXTENSIONS) else []
    names += [id_code + ext for ext in IMAGE_EXTENSIONS + tuple(e.upper() for e in IMAGE_EXTENSIONS)]
    return next((folder / n for n in names if (folder / n).is_file()), None)


def folder_images(folder: Path) -> list[Record]:
    """The images directly in ``folder`` as unlabelled records, sorted by file name (id = file stem)."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    return [Record(id_code=p.stem, path=p, grade=None) for p in files]
