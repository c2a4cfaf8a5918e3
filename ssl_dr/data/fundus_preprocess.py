"""Fundus-specific preprocessing, done once per image before caching (see ``cache``).

Cropping to the bright disc and padding to a square gives every camera's photograph the same geometry, so a plain
resize keeps the fundus round and spends the pixels on the retina. Ben Graham's normalisation (Kaggle DR 2015
winner) subtracts the local average colour: it removes lighting and pigmentation differences and keeps lesions.
``fov_mask`` (``data.preprocess.mask``) blacks out all but a field of view whose outline is the same under quarter
turns, so a rotation pretext cannot read "up" from the camera's clipped edges, rim notch or halo; applied here, in
the cache, it gives the pretext, every arm and ``predict`` the same pixels. The mask's design and measurements
(and why the augmentations after the cache add no orientation): docs/camera_cues.md.

Everything here is a pure function on uint8 RGB arrays ``(H, W, 3)``, so it runs the same in a cache build
worker, a test or a notebook.
"""

from __future__ import annotations

from functools import cache

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
MASKS = ("rotation_invariant", "inscribed_circle", "none")
"""Values of ``data.preprocess.mask``; ``none`` is also what checkpoints written before the mask existed used."""
DEFAULT_MASK = "rotation_invariant"
MASK_MARGIN = 0.05
"""Share of the radius (half the side) by which a mask is shrunk, at least one pixel: it removes the
anti-aliased clipped edges (1-2 px), notches cut into the rim and the dark rim line; protruding notches are
already gone with the AND over rotations. Not more: on 400 EyePACS photographs (128 px) the rim halo peaks
at 0.92-0.93 R but is the same in every direction ((top + bottom) - (left + right) within +-5 grey levels
from 0.85 to 0.975 R), so a wider margin would only cost retina; what does differ by direction is the
illumination, top brighter than bottom in 65 % of photographs at 0.7-0.85 R, out of any margin's reach
(Ben Graham's normalisation, ``data.preprocess.ben_graham``, removes such slow gradients)."""
FIT_TOLERANCE = 0.03
"""``disc_centre``: a row whose half-width misses the fitted circle by more than this share of the radius
(and one pixel) is not rim (a notch, a speck) and is left out of the refit."""
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
               radius_fraction: float | None = RADIUS_FRACTION, threshold: float = DARK_THRESHOLD) -> np.ndarray:
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
    keep = bright_mask(image, threshold).view(np.uint8)
    if radius_fraction is not None:  # None: the caller has masked the image already (``fov_mask``)
        circle = np.zeros((height, width), dtype=np.uint8)
        cv2.circle(circle, (width // 2, height // 2), round(radius_fraction * min(height, width) / 2), 1, -1)
        keep = keep & circle
    return cv2.bitwise_and(out, out, mask=keep)


def disc_centre(mask: np.ndarray) -> tuple[float, float] | None:
    """``(x, y)`` centre of the circle that best fits the FOV's row extents, or ``None`` when there is none.

    Each row's half-width ``w`` obeys ``w^2 + y^2 = (R^2 - cy^2) + 2 cy y`` on a circle, flat clipped rows
    included, so one least-squares line gives ``cy``; rows that miss the circle by over ``FIT_TOLERANCE``
    of its radius (a rim notch widening them) are dropped and the line refitted; ``cx`` is the median row
    centre. Symmetric non-circles (an ellipse of a resized photograph) get their centre of symmetry.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size < 3:
        return None
    spans = mask[rows]
    left = spans.argmax(axis=1)
    right = mask.shape[1] - 1 - spans[:, ::-1].argmax(axis=1)
    y, half, middle = rows.astype(np.float64), (right - left + 1) / 2, (left + right) / 2
    keep = np.ones(rows.size, dtype=bool)
    for _ in range(3):
        (offset, slope), *_ = np.linalg.lstsq(np.stack([np.ones(keep.sum()), y[keep]], axis=1),
                                             half[keep] ** 2 + y[keep] ** 2, rcond=None)
        cy, radius2 = slope / 2, offset + slope**2 / 4
        if radius2 <= 0:
            return None
        miss = np.abs(np.sqrt(np.clip(radius2 - (y - cy) ** 2, 0, None)) - half)
        keep = miss <= max(1.0, FIT_TOLERANCE * np.sqrt(radius2))
        if keep.sum() < 3:
            return None
    return float(np.median(middle[keep])), float(cy)


def disc_square(fundus: np.ndarray, size: int) -> np.ndarray:
    """``fundus`` (a bounding-box crop) resized to a longer side of ``size`` and placed in a black
    ``(size, size, 3)`` square with the FOV's ``disc_centre`` at the square's centre (to half a pixel).

    The rotations that the pretext applies turn the image about the square's centre; ``pad_to_square``
    centres the bounding box instead, which a notch sticking out past a clipped edge (or clipping that
    differs at top and bottom) pulls off the disc's centre, every time the same way: the mask's AND over
    rotations then keeps the notch, and the vignetting is off-centre always downwards, both cues. Pixels
    farther than half the side from the centre (beyond the disc: a notch tip) are cut off.
    """
    small = resize_longer(fundus, size)
    height, width = small.shape[:2]
    centre = disc_centre(bright_mask(small))
    cx, cy = centre if centre is not None else ((width - 1) / 2, (height - 1) / 2)
    top, left = round((size - 1) / 2 - cy), round((size - 1) / 2 - cx)
    out = np.zeros((size, size, 3), dtype=np.uint8)
    rows = slice(max(top, 0), min(top + height, size))
    cols = slice(max(left, 0), min(left + width, size))
    out[rows, cols] = small[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left]
    return out


def fov_mask(image: np.ndarray, kind: str = DEFAULT_MASK, margin: float = MASK_MARGIN,
             threshold: float = DARK_THRESHOLD) -> np.ndarray:
    """``(S, S)`` uint8 0/1 mask of a square image's pixels that may be kept (see the module docstring).

    The FOV is the bright pixels with their holes filled (a dark macula or lesion inside the disc stays).
    Both masks are exactly invariant under ``np.rot90`` / ``torch.rot90``: the rotation-invariant one by
    construction (an AND over the four quarter turns, taken after the erosion, so the kernel's own
    asymmetry cannot matter), the circle because it is cut from distances to the exact centre
    ``(S - 1) / 2``. In an image with nothing bright, every pixel that is not black padding counts as FOV.
    """
    side = image.shape[0]
    if image.shape[1] != side:
        raise ValueError(f"fov_mask needs a square image, got {image.shape[:2]}")
    if kind not in MASKS or kind == "none":
        raise ValueError(f"mask {kind!r} must be one of {', '.join(m for m in MASKS if m != 'none')}")
    margin_px = max(1, round(margin * side / 2))
    fov = _filled(bright_mask(image, threshold).view(np.uint8))
    if not fov.any():  # a very dark photograph: all of it that is not padding
        fov = _filled(image.any(axis=2).view(np.uint8))
    if kind == "inscribed_circle":
        outside = _centre_distance(side)[fov == 0]
        radius = min(outside.min() if outside.size else side / 2, side / 2)  # the square's edge bounds it too
        return (_centre_distance(side) < radius - margin_px).view(np.uint8)
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * margin_px + 1, 2 * margin_px + 1))
    # the border counts as outside: a disc touching the square's edge (it always does, after the crop) is
    # shrunk there too
    inner = cv2.erode(fov, disk, borderType=cv2.BORDER_CONSTANT, borderValue=0)
    return inner & np.rot90(inner, 1) & np.rot90(inner, 2) & np.rot90(inner, 3)


def _filled(mask: np.ndarray) -> np.ndarray:
    """``mask`` (uint8 0/1) with every hole (a region the outside cannot reach) set to 1."""
    padded = cv2.copyMakeBorder(mask, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    cv2.floodFill(padded, None, (0, 0), 2)
    return (padded[1:-1, 1:-1] != 2).view(np.uint8)


@cache
def _centre_distance(side: int) -> np.ndarray:
    """``(side, side)`` float32 distance of every pixel centre to the square's centre (read-only)."""
    axis = np.arange(side, dtype=np.float32) - (side - 1) / 2
    distance = np.hypot(axis[:, None], axis[None, :])
    distance.setflags(write=False)
    return distance


_ben_graham = ben_graham  # ``preprocess`` takes a ``ben_graham`` flag, which shadows the function there


def preprocess(image: np.ndarray, size: int, ben_graham: bool, mask: str = DEFAULT_MASK) -> np.ndarray:
    """Crop to the fundus, pad to a centred square of ``(size, size, 3)`` uint8, mask, optionally Ben Graham.

    ``mask="none"``: the geometry of ``cv2.resize(crop_to_fundus(image), (size, size))`` (what checkpoints
    from before the mask were trained on), but resized before padding: a 10 MP photograph is never copied
    into an even larger padded one. A mask (``MASKS``) centres the disc instead (``disc_square``), and what
    lies outside the FOV mask is black. Ben Graham then runs on the masked image and is masked again, so its
    blur never sees the rim, the halo or a clipped edge, and its own circle (centred half a pixel off for
    even sizes) is not used.
    """
    if size < 1:
        raise ValueError(f"image size must be positive, got {size}")
    if mask not in MASKS:
        raise ValueError(f"mask {mask!r} must be one of {', '.join(MASKS)}")
    box = fundus_box(image)
    fundus = image if box is None else image[box]
    if mask == "none":
        out = pad_to_square(resize_longer(fundus, size))
        return _ben_graham(out) if ben_graham else out
    out = disc_square(fundus, size)
    keep = fov_mask(out, mask)
    out = cv2.bitwise_and(out, out, mask=keep)
    if ben_graham:
        out = _ben_graham(out, radius_fraction=None)
        out = cv2.bitwise_and(out, out, mask=keep)
    return out
