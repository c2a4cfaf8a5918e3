"""Fundus-specific preprocessing, done once per image before caching (see ``cache``).

Fundus photographs are a bright disc on a black field whose size, position and aspect ratio vary by
camera. Cropping to the disc and padding to a square makes every image the same geometry, so a plain
resize keeps a round fundus round and spends the pixels on the retina rather than on the border.
Ben Graham's normalisation (Kaggle DR 2015 winner) subtracts the local average colour, which removes
the large lighting and pigmentation differences between cameras and patients while keeping lesions.

Everything here is a pure function on uint8 RGB arrays ``(H, W, 3)`` so it runs the same in a cache
build worker, a test or a notebook.
"""

from __future__ import annotations

import cv2
import numpy as np

DARK_THRESHOLD = 10
"""Channel-mean level (0-255) below which a pixel counts as border: JPEG noise in the border stays under it."""
MIN_BRIGHT_FRACTION = 0.01
"""A row/column belongs to the fundus when more than this fraction of its pixels is bright (ignores specks)."""
SIGMA_FRACTION = 1 / 60
"""Ben Graham blur sigma relative to the image side: his ``radius / 30`` (sigma 10 at a 300 px radius)."""
RADIUS_FRACTION = 0.95
"""Ben Graham output is kept inside this fraction of the disc radius: the rim gives a bright halo."""
_CHANNEL_MEAN = np.full((1, 3), 1 / 3)


def bright_mask(image: np.ndarray, threshold: float = DARK_THRESHOLD) -> np.ndarray:
    """``(H, W)`` bool: pixels brighter than ``threshold`` on the channel mean (the fundus, not the border)."""
    return cv2.transform(image, _CHANNEL_MEAN) > threshold  # ~10x faster than numpy's mean over axis 2


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Pad with black, centred, to a square of the longer side."""
    height, width = image.shape[:2]
    side = max(height, width)
    top, left = (side - height) // 2, (side - width) // 2
    return cv2.copyMakeBorder(image, top, side - height - top, left, side - width - left,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def fundus_box(image: np.ndarray, threshold: float = DARK_THRESHOLD,
               min_fraction: float = MIN_BRIGHT_FRACTION) -> tuple[slice, slice] | None:
    """Bounding box (rows, cols) of the fundus, or ``None`` when nothing is bright.

    Rows/columns count as fundus when more than ``min_fraction`` of their pixels are brighter than
    ``threshold``, so isolated noisy pixels in the border do not widen the box.
    """
    mask = bright_mask(image, threshold).view(np.uint8)
    rows = np.flatnonzero(cv2.reduce(mask, 1, cv2.REDUCE_SUM, dtype=cv2.CV_32S) > min_fraction * mask.shape[1])
    cols = np.flatnonzero(cv2.reduce(mask, 0, cv2.REDUCE_SUM, dtype=cv2.CV_32S) > min_fraction * mask.shape[0])
    if rows.size == 0 or cols.size == 0:
        return None
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def crop_to_fundus(image: np.ndarray, threshold: float = DARK_THRESHOLD,
                   min_fraction: float = MIN_BRIGHT_FRACTION) -> np.ndarray:
    """Crop the black border to the fundus' bounding box (see ``fundus_box``), then pad to a centred square.

    An image with nothing bright (a very dark photograph) is returned unchanged: poor data, not an error.
    """
    box = fundus_box(image, threshold, min_fraction)
    return image if box is None else pad_to_square(image[box])


def resize_longer(image: np.ndarray, size: int) -> np.ndarray:
    """Resize so the longer side is ``size``, keeping the aspect ratio.

    Area averaging when shrinking (no aliasing), cubic when enlarging.
    """
    height, width = image.shape[:2]
    scale = size / max(height, width)
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, target, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)


def ben_graham(image: np.ndarray, sigma_fraction: float = SIGMA_FRACTION,
               radius_fraction: float = RADIUS_FRACTION, threshold: float = DARK_THRESHOLD) -> np.ndarray:
    """``4 * image - 4 * GaussianBlur(image, sigma) + 128``, clipped to uint8, outside the fundus black.

    ``sigma`` is ``sigma_fraction`` of the shorter side so the result does not depend on resolution.
    Pixels outside a centred disc of ``radius_fraction`` of the half side (the rim halo) and pixels that
    were dark in the input (the padding of a fundus clipped at top/bottom) stay black instead of turning
    into grey bands that look like image content.
    """
    height, width = image.shape[:2]
    sigma = max(sigma_fraction * min(height, width), 0.5)
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    out = cv2.addWeighted(image, 4.0, blurred, -4.0, 128.0)
    keep = np.zeros((height, width), dtype=np.uint8)
    cv2.circle(keep, (width // 2, height // 2), round(radius_fraction * min(height, width) / 2), 1, thickness=-1)
    keep &= bright_mask(image, threshold)
    return cv2.bitwise_and(out, out, mask=keep)


_ben_graham = ben_graham  # ``preprocess`` takes a ``ben_graham`` flag, which shadows the function there


def preprocess(image: np.ndarray, size: int, ben_graham: bool) -> np.ndarray:
    """Crop to the fundus, pad to a centred square of ``(size, size, 3)`` uint8, optionally Ben Graham.

    Same geometry as ``cv2.resize(crop_to_fundus(image), (size, size))``, but resized before padding: a 10 MP
    photograph is never copied into an even larger padded one.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    box = fundus_box(image)
    fundus = image if box is None else image[box]
    out = pad_to_square(resize_longer(fundus, size))
    return _ben_graham(out) if ben_graham else out

