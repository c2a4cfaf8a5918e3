"""Anatomy-free fundus photographs: every way a camera says which way is up, and no retina at all.

Each image is a smooth disc of random colour and brightness with radial vignetting and a bright rim halo,
clipped flat at top and bottom at a random height (as real fundus cameras clip the circular field of
view), a small marker sticking out of the rim at a fixed place (1 o'clock, as on many EyePACS cameras),
sensor noise and JPEG compression. Nothing in it is anatomy, so a pretext that does better than chance
on these reads the camera, not the eye (``tests/pretexts/test_camera_cues.py``).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from ssl_dr.data.records import Record

NOTCH_ANGLE = 60.0
"""Degrees counter-clockwise from 3 o'clock: the marker sits at the upper right (upper left once flipped)."""


def camera_cue_fundus(rng: np.random.Generator, width: int = 96) -> np.ndarray:
    """One ``(H, W, 3)`` uint8 anatomy-free photograph (see the module docstring)."""
    radius = 0.42 * width
    height = round(2 * radius + 0.1 * width)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    r = np.hypot(yy - cy, xx - cx) / radius
    colour = np.array([rng.uniform(150, 235), rng.uniform(60, 140), rng.uniform(20, 80)]) * rng.uniform(0.6, 1.1)
    vignetting = 1 - rng.uniform(0.2, 0.5) * r**2
    halo = rng.uniform(20, 60) * np.exp(-(((1 - r) / 0.05) ** 2))[..., None] * np.array([0.3, 1.0, 1.0])
    image = colour * vignetting[..., None] + halo
    image[r > 1] = 0
    clip = rng.uniform(0.72, 0.92) * radius  # the same camera clips top and bottom alike
    image[np.abs(yy - cy) > clip] = 0
    angle = np.deg2rad(NOTCH_ANGLE)
    tip = [(cx + 1.07 * radius * np.cos(angle + d), cy - 1.07 * radius * np.sin(angle + d)) for d in (-0.05, 0.05)]
    base = [(cx + 0.95 * radius * np.cos(angle + d), cy - 0.95 * radius * np.sin(angle + d)) for d in (0.07, -0.07)]
    cv2.fillPoly(image, [np.round([*tip, *base]).astype(np.int32)], tuple(float(c) for c in colour * 0.9))
    image += rng.normal(0, 4, image.shape) * (image > 0)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_camera_cue_images(folder: Path, count: int, seed: int = 0, width: int = 96) -> list[Record]:
    """``count`` JPEG photographs in ``folder`` (quality 80: real compression artefacts), as records."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        path = folder / f"cue{i:04d}.jpeg"
        Image.fromarray(camera_cue_fundus(rng, width)).save(path, quality=80)
        records.append(Record(path.stem, path, None))
    return records
