"""One image from the parts: render_fundus runs anatomy, lesions and artefacts through compositing and
the camera model; render_montage picks one clear example per grade for the README."""

from __future__ import annotations

import cv2
import numpy as np

from ssl_dr.data.records import GRADE_NAMES, NUM_GRADES
from ssl_dr.data.synthetic.anatomy import (
    EYES,
    Anatomy,
    Look,
    blur_mask,
    dist2,
    draw_background,
    draw_vessels,
    optic_disc,
    sample_anatomy,
    sample_look,
    vessel_tree,
)
from ssl_dr.data.synthetic.lesions import draw_artefacts, draw_lesions

# random streams: every image's generator is keyed (seed, stream, ...), defined here so they stay distinct
STREAM_LABELLED, STREAM_UNLABELLED, STREAM_MONTAGE, STREAM_GRADES = 1, 2, 3, 4
SEED_TAG = 0x5D12  # last seed word: SeedSequence treats trailing zeros as absent, a constant tag avoids that

# How each lesion layer is composited: ("mul", per-channel factor) darkens the local colour,
# ("mix", RGB colour) blends towards a colour scaled by the local illumination. Order matters:
# intraretinal lesions lie under the vessels, cotton-wool spots / pre-retinal blood / dust over them.
_UNDER_VESSELS = {
    "drusen": ("mix", (238, 214, 130)),
    "red": ("mul", (0.50, 0.17, 0.20)),
    "exudate": ("mix", (255, 226, 115)),
    "pale": ("mix", (236, 200, 150)),
    "pigment": ("mul", (0.32, 0.26, 0.24)),
}
_OVER_VESSELS = {
    "cws": ("mix", (240, 236, 218)),
    "preretinal": ("mul", (0.52, 0.12, 0.14)),
    "dust": ("mul", (0.70, 0.74, 0.78)),
}
_LAYER_BLUR = {"cws": 0.012, "pale": 0.004, "dust": 0.02, "preretinal": 0.004}  # sigma in FOV diameters


def render_fundus(rng: np.random.Generator, grade: int, size: int, eye: str = "left") -> np.ndarray:
    """One RGB uint8 image ``(size, size, 3)`` of the given DR grade (0-4); ``eye`` in {"left","right"}.

    Anatomy and photographic look come from one child stream and lesions from another, so the same
    ``rng`` state rendered at two grades gives the same eye with different lesions (handy for tests).
    """
    if not isinstance(grade, (int, np.integer)) or not 0 <= grade < NUM_GRADES:
        raise ValueError(f"grade must be an integer in 0..{NUM_GRADES - 1}, got {grade!r}")
    if eye not in EYES:
        raise ValueError(f"eye must be one of {EYES}, got {eye!r}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    anat_rng, lesion_rng = (np.random.default_rng(s) for s in rng.integers(0, 2**63, size=2))
    anat = sample_anatomy(anat_rng, size, eye)
    look = sample_look(anat_rng, size)
    vessels = vessel_tree(anat_rng, anat)
    img, illum = draw_background(anat_rng, anat, look)
    optic_disc(anat_rng, img, illum, anat)
    lesions, vessels = draw_lesions(lesion_rng, int(grade), anat, vessels)
    layers = draw_artefacts(anat_rng, anat) | lesions
    _composite(img, illum, layers, _UNDER_VESSELS, anat)
    draw_vessels(img, anat, vessels)
    _composite(img, illum, layers, _OVER_VESSELS, anat)
    return _finish(anat_rng, img, anat, look)


def _composite(
    img: np.ndarray,
    illum: np.ndarray,
    layers: dict[str, np.ndarray],
    order: dict[str, tuple[str, tuple[float, ...]]],
    anat: Anatomy,
) -> None:
    base_sigma = 0.25 * anat.size / 128
    for name, (mode, value) in order.items():
        if name not in layers:
            continue
        sigma = max(base_sigma, _LAYER_BLUR.get(name, 0.0) * anat.diam)
        alpha = blur_mask(layers[name], sigma)[..., None] * (1 / 255)
        colour = np.asarray(value, np.float32)
        if mode == "mul":
            img *= 1.0 - alpha * (1.0 - colour)
        else:
            img += alpha * (illum[..., None] * colour - img)


def _finish(rng: np.random.Generator, img: np.ndarray, anat: Anatomy, look: Look) -> np.ndarray:
    """Camera: exposure, defocus, sensor noise, gamma; black outside the circular field of view."""
    fov = np.clip(anat.radius + 0.5 - np.sqrt(dist2(anat.size, anat.centre)), 0, 1)
    img *= look.gain
    if look.blur > 0.25:
        img = cv2.GaussianBlur(img, (0, 0), look.blur)
    img += rng.standard_normal(img.shape, dtype=np.float32) * look.noise
    img *= fov[..., None]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    lut = np.clip(255.0 * (np.arange(256) / 255.0) ** look.gamma + 0.5, 0, 255).astype(np.uint8)
    return cv2.LUT(out, lut)


def render_montage(seed: int = 0, size: int = 128) -> np.ndarray:
    """One image per grade 0..4 side by side with the grade written under each (for the README)."""
    tiles = []
    strip = max(14, size // 7)
    for grade in range(NUM_GRADES):
        tile = np.zeros((size + strip, size, 3), np.uint8)
        tile[:size] = _clearest_example(seed, grade, size, EYES[grade % 2])
        scale = strip / 40
        cv2.putText(
            tile,
            f"{grade} {GRADE_NAMES[grade]}",
            (max(2, size // 30), size + int(0.72 * strip)),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (255, 255, 255),
            max(1, round(scale * 1.5)),
            cv2.LINE_AA,
        )
        tiles.append(tile)
    return np.hstack(tiles)


def _clearest_example(seed: int, grade: int, size: int, eye: str, candidates: int = 4) -> np.ndarray:
    """Of a few random examples, the one whose lesions change the most pixels (same eye rendered at grade
    0 as reference): a montage should show what a grade looks like, not its faintest case."""
    best, best_area = None, -1.0
    for k in range(candidates):
        key = [seed, STREAM_MONTAGE, grade, k, SEED_TAG]
        img = render_fundus(np.random.default_rng(key), grade, size, eye)
        healthy = render_fundus(np.random.default_rng(key), 0, size, eye)
        area = float(np.mean(np.abs(img.astype(np.int16) - healthy).sum(axis=2) > 30))
        if area > best_area:
            best, best_area = img, area
    return best
