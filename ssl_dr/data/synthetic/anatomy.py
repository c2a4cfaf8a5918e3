"""The healthy eye: per-image anatomy and photographic look, background illumination, optic disc and
the vessel tree (grown in a canonical frame, drawn into the image), plus the pixel helpers all drawing
shares."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

EYES = ("left", "right")

SHIFT = 4  # fractional bits for sub-pixel cv2 drawing
_SUPERSAMPLE = 3  # vessels are drawn at 3x and area-downsampled, giving sub-pixel widths
STEP = 0.008  # vessel polyline step, in FOV diameters
_MIN_VESSEL_WIDTH = 0.004  # in FOV diameters
_VEIN_FACTOR = np.array([0.58, 0.34, 0.48], np.float32)
_ARTERY_FACTOR = np.array([0.78, 0.56, 0.64], np.float32)


@dataclass(frozen=True)
class Anatomy:
    """Where things are. The canonical frame has its origin at the disc centre, +x temporal, +y inferior
    and the FOV diameter as unit; ``frame`` maps it to pixel offsets (tilt and left/right mirroring)."""

    size: int
    centre: np.ndarray  # FOV centre (x, y) px
    radius: float  # FOV radius px
    disc: np.ndarray  # disc centre (x, y) px
    fovea: np.ndarray  # fovea (x, y) px
    fovea_can: np.ndarray  # fovea in the canonical frame
    centre_can: np.ndarray  # FOV centre in the canonical frame
    disc_diam: float  # canonical units
    frame: np.ndarray  # 2x2 linear map canonical -> px

    @property
    def diam(self) -> float:
        return 2.0 * self.radius

    def to_px(self, pts: np.ndarray) -> np.ndarray:
        return self.disc + pts @ self.frame.T


@dataclass(frozen=True)
class Vessel:
    points: np.ndarray  # (n, 2) canonical
    widths: np.ndarray  # (n,) canonical
    vein: bool
    arcade: bool = False  # a temporal arcade trunk (where cotton-wool spots and NVE sit)


@dataclass(frozen=True)
class Look:
    """Per-image photographic variation (camera, pigmentation, focus, exposure)."""

    base: np.ndarray  # RGB of the retina at the illumination peak
    gain: float
    gamma: float
    blur: float  # Gaussian sigma in px
    noise: float  # Gaussian noise sigma in grey levels


def sample_anatomy(rng: np.random.Generator, size: int, eye: str) -> Anatomy:
    """Disc nasal, fovea ~2.5 disc diameters temporal and a little lower; small tilt and jitter."""
    centre = np.full(2, (size - 1) / 2.0)
    radius = size * rng.uniform(0.46, 0.485)
    tilt = np.deg2rad(rng.uniform(-4.0, 4.0))
    rot = np.array([[np.cos(tilt), -np.sin(tilt)], [np.sin(tilt), np.cos(tilt)]])
    mirror = 1.0 if eye == "left" else -1.0  # left eye: disc on the image's left, temporal = +x
    frame = 2.0 * radius * rot @ np.diag([mirror, 1.0])
    disc_diam = rng.uniform(0.11, 0.13)
    disc_from_centre = np.array([-rng.uniform(0.21, 0.25), -rng.uniform(0.0, 0.03)])
    disc = centre + frame @ disc_from_centre + rng.normal(0.0, 0.008 * 2 * radius, 2)
    fovea_can = np.array([2.5 * disc_diam * rng.uniform(0.93, 1.07), disc_diam * rng.uniform(0.35, 0.6)])
    centre_can = np.linalg.solve(frame, centre - disc)
    return Anatomy(size, centre, radius, disc, disc + frame @ fovea_can, fovea_can, centre_can, disc_diam, frame)


def sample_look(rng: np.random.Generator, size: int) -> Look:
    """Fundus pigmentation and camera settings vary between patients and clinics, so must the images."""
    base = np.array([rng.uniform(185, 235), rng.uniform(68, 115), rng.uniform(22, 60)], np.float32)
    return Look(
        base=base,
        gain=rng.uniform(0.75, 1.12),
        gamma=rng.uniform(0.85, 1.2),
        blur=rng.uniform(0.0, 0.6) * size / 128,
        noise=rng.uniform(1.0, 4.0),
    )


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates, cached per size (read-only)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    xx.flags.writeable = yy.flags.writeable = False
    return xx, yy


def dist2(size: int, point: np.ndarray) -> np.ndarray:
    """Squared distance (float32) of every pixel centre to ``point``."""
    xx, yy = _grid(size)
    return (xx - float(point[0])) ** 2 + (yy - float(point[1])) ** 2


def draw_background(rng: np.random.Generator, anat: Anatomy, look: Look) -> tuple[np.ndarray, np.ndarray]:
    """Orange-red retina: radial illumination fall-off from a slightly off-centre hot spot, a blotchy
    low-frequency choroidal texture and the darker macula/fovea. Returns (image, illumination)."""
    r2 = dist2(anat.size, anat.centre + rng.normal(0.0, 0.03 * anat.diam, 2)) * (1.0 / anat.radius**2)
    k1, k2 = rng.uniform(0.2, 0.42), rng.uniform(0.05, 0.25)
    texture = cv2.resize(
        rng.standard_normal((5, 5), dtype=np.float32), (anat.size, anat.size), interpolation=cv2.INTER_CUBIC
    )
    illum = (1.0 - k1 * r2 - k2 * r2 * r2) * (1.0 + rng.uniform(0.03, 0.07) * texture)
    d2 = dist2(anat.size, anat.fovea)
    dd_px = anat.disc_diam * anat.diam
    macula = rng.uniform(0.2, 0.32) * np.exp(d2 * (-0.5 / (0.55 * dd_px) ** 2))
    fovea = rng.uniform(0.08, 0.16) * np.exp(d2 * (-0.5 / (0.12 * dd_px) ** 2))
    img = (illum * (1.0 - macula - fovea))[..., None] * look.base
    return img, illum


def optic_disc(rng: np.random.Generator, img: np.ndarray, illum: np.ndarray, anat: Anatomy) -> None:
    """Bright yellow-white, slightly vertically oval disc with a brighter cup, offset temporally and a
    little superiorly (the inferior rim is the thickest, the ISNT rule: one more up/down cue)."""
    dd_px = anat.disc_diam * anat.diam
    angle = float(np.rad2deg(np.arctan2(anat.frame[1, 0], anat.frame[0, 0])))
    disc_col = np.array([255, rng.uniform(200, 230), rng.uniform(130, 175)], np.float32)
    cup_col = np.array([255, 248, rng.uniform(205, 235)], np.float32)
    cup_ratio = rng.uniform(0.3, 0.5)
    cup = anat.to_px(np.array([0.08, -0.05]) * anat.disc_diam)
    for centre, axes, colour, opacity, soft in (
        (anat.disc, (0.48 * dd_px, 0.53 * dd_px), disc_col, rng.uniform(0.8, 0.95), 0.05),
        (cup, (0.5 * cup_ratio * dd_px, 0.55 * cup_ratio * dd_px), cup_col, rng.uniform(0.6, 0.85), 0.1),
    ):
        mask = np.zeros(img.shape[:2], np.uint8)
        cv2.ellipse(mask, fixed_point(centre), fixed_point(axes), angle, 0, 360, 255, -1, cv2.LINE_AA, SHIFT)
        alpha = blur_mask(mask, soft * dd_px) * (opacity / 255)
        img += alpha[..., None] * ((0.8 + 0.2 * illum)[..., None] * colour - img)


def grow(
    rng: np.random.Generator,
    anat: Anatomy,
    starts: np.ndarray,
    headings: np.ndarray,
    lengths: np.ndarray,
    curvatures: np.ndarray,
    widths: np.ndarray,
    veins: np.ndarray,
    *,
    taper: float,
    wiggle: float,
    decay: float = np.inf,
    arcades: np.ndarray | None = None,
) -> list[tuple[Vessel, np.ndarray]]:
    """Grow a batch of tapering vessels at once (one per row; batching keeps Python overhead low).

    Each is a smooth random walk in the canonical frame whose ``curvature`` (rad per FOV diameter) fades
    over arc length ``decay`` (arcades bend most near the disc); it stops where it would enter the
    avascular fovea or leave the field of view. Returns (vessel, segment headings) pairs."""
    k = len(starts)
    n = max(2, int(lengths.max() / STEP))
    turns = curvatures[:, None] * (STEP * np.exp(-np.arange(n) * STEP / decay)) + rng.normal(0, wiggle, (k, n))
    heads = headings[:, None] + np.cumsum(turns, axis=1)
    pts = np.empty((k, n + 1, 2))
    pts[:, 0] = starts
    pts[:, 1:, 0] = starts[:, :1] + np.cumsum(STEP * np.cos(heads), axis=1)
    pts[:, 1:, 1] = starts[:, 1:] + np.cumsum(STEP * np.sin(heads), axis=1)
    planned = np.maximum(lengths / STEP, 2.0)[:, None]
    steps = np.arange(n + 1)[None, :]
    bad = (((pts - anat.fovea_can) ** 2).sum(2) < (0.6 * anat.disc_diam) ** 2) | (steps > planned)
    bad |= ((pts - anat.centre_can) ** 2).sum(2) > 0.25
    stops = np.where(bad.any(axis=1), bad.argmax(axis=1), n + 1)
    w = np.maximum(widths[:, None] * (1.0 - (1.0 - taper) * np.minimum(steps / planned, 1.0)), _MIN_VESSEL_WIDTH)
    arcades = np.zeros(k, bool) if arcades is None else arcades
    return [
        (Vessel(pts[i, :stop], w[i, :stop], bool(veins[i]), bool(arcades[i])), heads[i, : stop - 1])
        for i, stop in enumerate(stops)
        if stop >= 3
    ]


# (initial heading deg, total turn deg, length) of the main trunks in the canonical frame
_TRUNKS = np.array(
    [
        (-72.0, 80.0, 0.8),  # superior temporal arcade
        (74.0, -80.0, 0.8),  # inferior temporal arcade
        (-112.0, -45.0, 0.5),  # superior nasal
        (110.0, 45.0, 0.5),  # inferior nasal
    ]
)
_TRUNK_DECAY = 0.25  # FOV diameters over which a trunk's bend fades


def vessel_tree(rng: np.random.Generator, anat: Anatomy) -> list[Vessel]:
    """Vein/artery pairs for the four arcades plus thin macular twigs, with two generations of side
    branches; veins are wider than arteries and the inferotemporal vein is the widest, as in real eyes."""
    veins = np.repeat([True, False], 4)
    heading, turn, length = np.tile(_TRUNKS, (2, 1)).T
    heading = np.deg2rad(heading + rng.normal(0, 5, 8) - np.where(veins, 0.0, np.sign(heading) * 12))
    width = np.where(veins, 0.014, 0.0105) * np.tile([1.0, 1.1, 0.8, 0.8], 2)
    starts = 0.12 * anat.disc_diam * np.stack([np.cos(heading), np.sin(heading)], axis=1)
    trunks = grow(
        rng,
        anat,
        starts,
        heading,
        length * rng.uniform(0.9, 1.1, 8),
        np.deg2rad(turn * rng.uniform(0.8, 1.2, 8)) / _TRUNK_DECAY,
        width,
        veins,
        taper=0.45,
        wiggle=0.03,
        decay=_TRUNK_DECAY,
        arcades=np.tile([True, True, False, False], 2),
    )
    branches = _branch(rng, anat, trunks, (0.1, 0.18), (0.1, 0.25), keep=1.0)
    twigs_side = np.array([-1.0, 1.0])
    twig_heading = np.deg2rad(twigs_side * rng.uniform(8, 25, 2))
    twigs = grow(
        rng,
        anat,
        np.zeros((2, 2)),
        twig_heading,
        np.full(2, 0.2),
        twigs_side * np.deg2rad(60),
        np.full(2, 0.006),
        twigs_side > 0,
        taper=0.6,
        wiggle=0.05,
    )
    return [v for v, _ in trunks + branches + _branch(rng, anat, branches, (0.05, 0.09), (0.04, 0.1), keep=0.6) + twigs]


def _branch(
    rng: np.random.Generator,
    anat: Anatomy,
    parents: list[tuple[Vessel, np.ndarray]],
    spacing: tuple[float, float],
    length: tuple[float, float],
    keep: float,
) -> list[tuple[Vessel, np.ndarray]]:
    """Side branches at regular-ish intervals along each parent, alternating sides (a fraction ``keep``
    of the sites sprouts), leaving at 35-70 degrees with 55-80 % of the parent's width."""
    starts, headings, widths, veins = [], [], [], []
    for parent, heads in parents:
        step = max(3, int(rng.uniform(*spacing) / STEP))
        idx = np.arange(int(rng.integers(step // 2, step + 1)), len(heads) - 2, step)
        idx = idx[rng.random(len(idx)) < keep]
        sides = np.where(np.arange(len(idx)) % 2 == 0, 1.0, -1.0) * (1.0 if rng.random() < 0.5 else -1.0)
        starts.append(parent.points[idx])
        headings.append(heads[idx] + sides * np.deg2rad(rng.uniform(35, 70, len(idx))))
        widths.append(parent.widths[idx] * rng.uniform(0.55, 0.8, len(idx)))
        veins.append(np.full(len(idx), parent.vein))
    k = sum(len(h) for h in headings)
    if k == 0:
        return []
    return grow(
        rng,
        anat,
        np.concatenate(starts),
        np.concatenate(headings),
        rng.uniform(*length, k),
        np.deg2rad(rng.uniform(-80, 80, k)),
        np.concatenate(widths),
        np.concatenate(veins),
        taper=0.5,
        wiggle=0.05,
    )


def draw_vessels(img: np.ndarray, anat: Anatomy, vessels: Sequence[Vessel]) -> None:
    """Vessels darken the retina multiplicatively (veins darker and wider than arteries). All segments
    of one kind and thickness go to cv2 in one call, drawn at 3x (cheap LINE_8) and area-downsampled,
    which anti-aliases and gives sub-pixel widths."""
    big = anat.size * _SUPERSAMPLE
    pts = (anat.to_px(np.concatenate([v.points for v in vessels])) + 0.5) * _SUPERSAMPLE - 0.5
    widths = np.concatenate([v.widths for v in vessels])
    owner = np.repeat(np.arange(len(vessels)), [len(v.widths) for v in vessels])
    inner = owner[:-1] == owner[1:]  # segments joining consecutive points of the same vessel
    segs = fixed_point(np.stack([pts[:-1], pts[1:]], axis=1)[inner])
    thick = np.maximum(1, np.rint(0.5 * (widths[:-1] + widths[1:])[inner] * anat.diam * _SUPERSAMPLE))
    is_vein = np.array([v.vein for v in vessels])[owner[:-1][inner]]
    for vein, factor in ((True, _VEIN_FACTOR), (False, _ARTERY_FACTOR)):
        mask = np.zeros((big, big), np.uint8)
        for t in np.unique(thick[is_vein == vein]):
            cv2.polylines(mask, segs[(thick == t) & (is_vein == vein)], False, 255, int(t), cv2.LINE_8, SHIFT)
        small = cv2.resize(mask, (anat.size, anat.size), interpolation=cv2.INTER_AREA)
        alpha = blur_mask(small, 0.3 * anat.size / 128) * (0.9 / 255)
        img *= 1.0 - alpha[..., None] * (1.0 - factor)


# pixel helpers shared by every drawing step (disc, vessels, lesions, compositing)


def blur_mask(mask: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)


def fixed_point(values: Sequence[float] | np.ndarray) -> tuple[int, ...] | np.ndarray:
    """Fixed-point coordinates for cv2 drawing with ``shift=SHIFT`` (tuple for a point/axes pair,
    int32 array for a polyline)."""
    arr = np.rint(np.asarray(values, np.float64) * (1 << SHIFT)).astype(np.int32)
    return tuple(int(v) for v in arr) if arr.ndim == 1 else arr
