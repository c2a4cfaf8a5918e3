"""The one way an image file becomes pixels, shared by the training cache and inference: the same modes,
the same strictness, the same errors (``DataError`` naming the file), so an image the cache accepts is an
image ``predict`` accepts, and the reverse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from ssl_dr.data.fundus_preprocess import preprocess
from ssl_dr.errors import DataError

SCALED_MODES = ("I;16", "I;16B", "I;16L", "I", "F")
"""16-bit, 32-bit integer and float images: scaled by their maximum (floats in [0, 1] by 255) to 8 bits;
``convert("RGB")`` alone would clip them (a float image in [0, 1] would turn black)."""


@contextmanager
def _strict() -> Iterator[None]:
    """A truncated file must fail, not decode half grey: PIL's global switch stays off while we decode."""
    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        yield
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous


def read_rgb(path: Path) -> np.ndarray:
    """Decode any common fundus file (greyscale, RGBA, palette, 16-bit, float, CMYK, EXIF-rotated) as uint8 RGB."""
    try:
        with _strict(), Image.open(path) as img:
            img = ImageOps.exif_transpose(img)
            if img.mode in SCALED_MODES:
                arr = np.nan_to_num(np.asarray(img, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
                scale = 255.0 / max(float(arr.max()), 1.0)
                img = Image.fromarray((arr * scale).clip(0, 255).astype(np.uint8))
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"cannot read image {path}: {err}; replace or remove the file") from err


def decode_preprocessed(path: Path, size: int, ben_graham: bool, mask: str) -> np.ndarray:
    """``read_rgb`` then ``preprocess`` (crop, resize, mask): the pixels the network sees before augmentation."""
    if not Path(path).is_file():
        raise DataError(f"image file {path} cannot be found (No such file or directory); restore the file or "
                        "remove its row")
    image = read_rgb(Path(path))
    try:
        return preprocess(image, size, ben_graham, mask)
    except (cv2.error, ValueError) as err:  # decodable but degenerate (e.g. zero-sized)
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(f"cannot preprocess image {path}: {first}; replace or remove the file") from None
