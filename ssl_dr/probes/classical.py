"""A non-deep reference representation: what colour, a coarse green-channel picture and edge energy alone tell.

Per image, inside the field of view (FOV): a normalised histogram per colour channel (``HIST_BINS`` bins each),
the green channel (where fundus lesions contrast most) masked and downsampled to ``THUMBNAIL`` x ``THUMBNAIL``,
and a normalised histogram of the Sobel gradient magnitude of the green channel (``EDGE_BINS`` bins up to
``EDGE_MAX``, the last bin open). The cache stores masked images, black outside the FOV
(``fundus_preprocess.fov_mask``); the FOV is read back as the bright pixels with their holes filled
(``bright_mask``), so dark border pixels never enter a histogram, and the edge histogram leaves out a
``EDGE_MARGIN``-pixel rim so the disc's own edge against the black surround is not counted as texture.
Stored like the deep features (``store``), keyed without weights.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage
from tqdm import tqdm

from ssl_dr.data.cache import ImageCache
from ssl_dr.data.fundus_preprocess import bright_mask
from ssl_dr.probes.store import FeatureSet, stored_features

HIST_BINS = 16
THUMBNAIL = 32
EDGE_BINS = 16
EDGE_MAX = 128.0
EDGE_MARGIN = 2
CLASSICAL_DIM = 3 * HIST_BINS + THUMBNAIL * THUMBNAIL + EDGE_BINS


def field_of_view(image: np.ndarray) -> np.ndarray:
    """``(H, W)`` bool: the bright pixels of a masked fundus with their holes (dark lesions, vessels) filled."""
    return ndimage.binary_fill_holes(bright_mask(image))


def colour_histograms(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``3 * HIST_BINS`` values: per channel, the share of FOV pixels in each of ``HIST_BINS`` equal bins of 0..255."""
    pixels = image[fov]
    if not len(pixels):
        return np.zeros(3 * HIST_BINS, dtype=np.float32)
    counts = [np.bincount(pixels[:, c] // (256 // HIST_BINS), minlength=HIST_BINS) for c in range(3)]
    return (np.concatenate(counts) / len(pixels)).astype(np.float32)


def green_thumbnail(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``THUMBNAIL ** 2`` values in 0..1: the green channel, zero outside the FOV, area-averaged down."""
    green = np.where(fov, image[..., 1], 0).astype(np.float32) / 255
    return cv2.resize(green, (THUMBNAIL, THUMBNAIL), interpolation=cv2.INTER_AREA).ravel()


def edge_histogram(image: np.ndarray, fov: np.ndarray) -> np.ndarray:
    """``EDGE_BINS`` values: the share of inner-FOV pixels per bin of the green channel's Sobel magnitude."""
    green = image[..., 1].astype(np.float32)
    magnitude = np.hypot(cv2.Sobel(green, cv2.CV_32F, 1, 0, ksize=3), cv2.Sobel(green, cv2.CV_32F, 0, 1, ksize=3))
    inner = ndimage.binary_erosion(fov, iterations=EDGE_MARGIN, border_value=0)
    values = magnitude[inner]
    if not len(values):
        return np.zeros(EDGE_BINS, dtype=np.float32)
    bins = np.minimum((values * (EDGE_BINS / EDGE_MAX)).astype(np.int64), EDGE_BINS - 1)
    return (np.bincount(bins, minlength=EDGE_BINS) / len(values)).astype(np.float32)


def classical_features(image: np.ndarray) -> np.ndarray:
    """``CLASSICAL_DIM`` float32 values of one ``(H, W, 3)`` uint8 masked fundus: histograms, thumbnail, edges."""
    fov = field_of_view(image)
    return np.concatenate([colour_histograms(image, fov), green_thumbnail(image, fov), edge_histogram(image, fov)])


def classical_description(cache: ImageCache) -> dict[str, Any]:
    return {"kind": "classical", "images": cache.key,
            "preprocess": {"size": cache.size, "mask": cache.mask, "ben_graham": cache.ben_graham},
            "hist_bins": HIST_BINS, "thumbnail": THUMBNAIL, "edge_bins": EDGE_BINS, "edge_max": EDGE_MAX,
            "edge_margin": EDGE_MARGIN}


def extract_classical(cache: ImageCache, cache_dir: str | Path) -> FeatureSet:
    """Classical features of every image in ``cache`` (rows in ``cache.ids`` order), stored like deep features."""
    def compute() -> tuple[list[str], np.ndarray]:
        rows = [classical_features(cache.row(i))
                for i in tqdm(range(len(cache)), desc=f"classical features of {len(cache)} images", unit="img")]
        return list(cache.ids), np.stack(rows) if rows else np.zeros((0, CLASSICAL_DIM), dtype=np.float32)

    return stored_features(cache_dir, classical_description(cache), compute)
